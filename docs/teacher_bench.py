"""Step time of each new teacher family against a plain ViT of the same size, through `hybrid-distill bench`.

    PYTHONPATH=src python docs/teacher_bench.py [--rounds 2] [--img 112] [--batch 8]

The experiment is configs/hybrid_vitb_mae_clip.yaml at ViT-S size (random weights): a ViT-S/16 student,
a ViT-S/16 MIM teacher (relations, token picking) and a feature teacher of width 384, depth 12, 6 heads
from each family in turn: a plain ViT (vit_small_patch16_224), DINOv3 (RoPE, 4 registers), EVA-02 (RoPE,
SwiGLU, patch 14 run at the student's grid), PE core (RoPE, attention-pool head) and SigLIP (no class
token, attention-pool head). The machine is shared: the families alternate with the plain ViT
(plain, family, plain, family, ...) for --rounds rounds; printed: the optimised step's median ms and the
feature teacher's own ms, each as mean +- spread (half the range) over rounds, and the family / plain ratio.

Measured (--rounds 3 --img 112 --batch 8 --steps 3; AMD EPYC, 2 cores shared with a 2-job study; git 804982f
with this script's paired ratios), optimised step ms and feature-teacher ms as mean +- half range over rounds,
and each family's step over the plain run just before it (paired), mean +- half range:
    plain ViT-S  1280 +- 279 / 435 +- 245
    DINOv3-S     1318 +-  49 / 567 +- 234   x1.07 +- 0.07
    EVA-02-S     1277 +-  96 / 439 +-  73   x0.98 +- 0.14
    PE core-S    1274 +- 126 / 437 +- 107   x1.04 +- 0.13
    SigLIP-S     1333 +- 184 / 405 +-  81   x1.01 +- 0.08
Every paired ratio's range covers 1 except DINOv3's (1.00-1.14): on this shared machine no family's step
differs from a plain ViT of its size by more than the machine's own noise; DINOv3 (RoPE and 4 registers) is
the one that may be a few per cent slower. An earlier single round (git 93c2958) gave 1.13 / 1.02 / 0.99 / 0.89.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FAMILIES = {
    "plain ViT-S": ("vit_small_patch16_224", {}),
    "DINOv3-S": ("vit_small_patch16_dinov3", {}),
    "EVA-02-S": ("eva02_small_patch14_224", {}),
    "PE core-S": ("vit_pe_core_small_patch16_384", {}),
    "SigLIP-S": ("vit_base_patch16_siglip_224", {"embed_dim": 384, "num_heads": 6}),
}


def bench(arch: str, kwargs: dict, args, out: Path) -> dict:
    overrides = [
        f"teachers.clip.arch={arch}",
        "teachers.clip.weights=random",
        "teachers.mim.arch=vit_small_patch16_224",
        "teachers.mim.weights=random",
        f"data.img_size={args.img}",
        f"student.model_kwargs.img_size={args.img}",
        *[f"teachers.clip.model_kwargs.{k}={v}" for k, v in kwargs.items()],
    ]
    command = [sys.executable, "-m", "hybrid_distill", "bench", "configs/hybrid_vitb_mae_clip.yaml", *overrides]
    command += ["--student", "vit_small_patch16_224", "--device", "cpu", "--batch", str(args.batch)]
    command += ["--steps", str(args.steps), "--warmup", "1", "--no-ablation", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench of {arch} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    step = json.loads(out.read_text())["steps"]["optimised"]
    return {"step_ms": 1000 * step["median_step_s"], "teacher_ms": 1000 * step["phases_s"]["teacher clip"]}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.0f} +- {(max(values) - min(values)) / 2:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--img", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    plain, rows = "plain ViT-S", {name: [] for name in FAMILIES}
    ratios = {name: [] for name in list(FAMILIES)[1:]}  # family / the plain run just before it: paired, so the
    with tempfile.TemporaryDirectory() as tmp:  # machine's drift between pairs cancels
        for _ in range(args.rounds):
            for name in list(FAMILIES)[1:]:
                for each in (plain, name):
                    rows[each].append(bench(*FAMILIES[each], args, Path(tmp) / "bench.json"))
                    print(each, {k: round(v) for k, v in rows[each][-1].items()}, flush=True)
                ratios[name].append(rows[name][-1]["step_ms"] / rows[plain][-1]["step_ms"])
    for name, runs in rows.items():
        step, teacher = [r["step_ms"] for r in runs], [r["teacher_ms"] for r in runs]
        paired = ratios.get(name)
        ratio = f", x{statistics.mean(paired):.2f} +- {(max(paired) - min(paired)) / 2:.2f} of plain" if paired else ""
        print(f"{name}: step {spread(step)} ms, feature teacher {spread(teacher)} ms{ratio}")


if __name__ == "__main__":
    main()
