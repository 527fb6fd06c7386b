"""Step time of each new teacher family against a plain ViT of the same size, through `hybrid-distill bench`.

    PYTHONPATH=src python docs/teacher_bench.py [--rounds 2] [--img 112] [--batch 8]

The experiment is configs/hybrid_vitb_mae_clip.yaml at ViT-S size (random weights): a ViT-S/16 student,
a ViT-S/16 MIM teacher (relations, token picking) and a feature teacher of width 384, depth 12, 6 heads
from each family in turn: a plain ViT (vit_small_patch16_224), DINOv3 (RoPE, 4 registers), EVA-02 (RoPE,
SwiGLU, patch 14 run at the student's grid), PE core (RoPE, attention-pool head) and SigLIP (no class
token, attention-pool head). The machine is shared: the families alternate with the plain ViT
(plain, family, plain, family, ...) for --rounds rounds; printed: the optimised step's median ms and the
feature teacher's own ms, each as mean +- spread (half the range) over rounds, and the family / plain ratio.

Measured (--rounds 1 --img 112 --batch 8 --steps 2; AMD EPYC, 2 cores shared with other jobs, load ~7),
optimised step ms and feature-teacher ms, each family beside the plain run just before it:
    plain 771 / 237   DINOv3-S 874 / 310   (x1.13)
    plain 843 / 256   EVA-02-S 860 / 275   (x1.02)
    plain 950 / 283   PE core-S 942 / 301  (x0.99)
    plain 873 / 275   SigLIP-S 781 / 245   (x0.89)
The plain step alone spans 771-950 ms (859 +- 90) on this shared machine: no family differs from a plain
ViT of its size by more than that spread. One round only; a quiet machine and --rounds 3 would say more.
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
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in list(FAMILIES)[1:]:
                for each in (plain, name):
                    rows[each].append(bench(*FAMILIES[each], args, Path(tmp) / "bench.json"))
                    print(each, {k: round(v) for k, v in rows[each][-1].items()}, flush=True)
    base = statistics.mean(r["step_ms"] for r in rows[plain])
    for name, runs in rows.items():
        step, teacher = [r["step_ms"] for r in runs], [r["teacher_ms"] for r in runs]
        ratio = statistics.mean(step) / base
        print(f"{name}: step {spread(step)} ms, feature teacher {spread(teacher)} ms, x{ratio:.2f} of plain")


if __name__ == "__main__":
    main()
