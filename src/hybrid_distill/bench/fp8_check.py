"""`hybrid-distill bench --fp8`: FP8 teachers (train.teacher_precision=fp8) against bf16 ones.

Reports, for the paper's ViT-B teachers (CLIP features, MAE relations; random weights, random
images), each target's relative error ||fp8 - bf16|| / ||bf16|| at the same kept tokens (and bf16's
own error against fp32, for scale), how many of the picker's kept tokens FP8 changes, and the speed
ratio of the teachers alone and of the whole training step (engine.train_step), bf16 over fp8.

    hybrid-distill bench --fp8 --device cuda --batch 256
"""

import argparse

import torch
from omegaconf import OmegaConf

from ..build import build_models
from ..data.transforms import to_unit
from ..masking import KeepGiven
from ..runtime import seed_everything
from .harness import (
    RANDOM_VITB,
    StepRig,
    common_args,
    device_from,
    median,
    paper_config,
    time_interleaved,
    write_result,
)

PRECISIONS = ("fp32", "bf16", "fp8")


def parse(argv):
    p = argparse.ArgumentParser(prog="hybrid-distill bench --fp8", description=__doc__.split("\n\n")[0])
    common_args(p, batch=None)
    p.add_argument("--no-step", action="store_true", help="time the teachers only, not the whole step")
    p.add_argument("overrides", nargs="*", help="dotted overrides of configs/hybrid_vitb_mae_clip.yaml")
    return p.parse_intermixed_args(argv)


def teacher_sets(cfg, device: torch.device) -> dict:
    """The same teachers (seeded: the same weights) in each precision, built as the trainer builds them."""
    sets = {}
    for precision in PRECISIONS:
        seed_everything(cfg.seed)
        _, sets[precision], _ = build_models(cfg, device=device, amp_dtype=torch.bfloat16, teacher_precision=precision)
    return sets


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def targets_at(teachers, pixels: torch.Tensor, keep: torch.Tensor) -> dict:
    """Every teacher's TeacherOutput at a given keep set (B, K)."""
    return {name: teachers.teachers[name](pixels, KeepGiven(keep)) for name in teachers.order()}


def target_errors(copies: dict, pixels: torch.Tensor) -> dict:
    """Every target of every copy at the bf16 picker's kept tokens, against bf16 (fp32 against fp32)."""
    keep = copies["bf16"](pixels).keep
    targets = {p: targets_at(t, pixels, keep) for p, t in copies.items()}
    errors = {}
    for name, out in targets["bf16"].items():
        pairs = {"features": (out.features, targets["fp8"][name].features, targets["fp32"][name].features)}
        for block, rel in out.relations.items():
            pairs[f"relation {block}"] = (
                rel,
                targets["fp8"][name].relations[block],
                targets["fp32"][name].relations[block],
            )
        for kind, (bf16, fp8, fp32) in pairs.items():
            if bf16 is not None:
                errors[f"{name} {kind}"] = {
                    "fp8_vs_bf16": relative_error(fp8, bf16),
                    "bf16_vs_fp32": relative_error(bf16, fp32),
                }
    return errors


def kept_overlap(copies: dict, pixels: torch.Tensor) -> float | None:
    """The fraction of the bf16 picker's kept tokens that the FP8 picker keeps too."""
    if not copies["bf16"].picker:
        return None
    a, b = copies["bf16"](pixels).keep, copies["fp8"](pixels).keep
    same = (a[:, :, None] == b[:, None, :]).any(-1).float()  # (B, K)
    return float(same.mean())


def main(argv=None) -> int:
    args = parse(argv)
    device = device_from(args)
    batch = args.batch or (256 if device.type == "cuda" else 4)
    cfg = paper_config("hybrid_vitb_mae_clip", RANDOM_VITB, ["train.amp=bf16", *args.overrides], args.smoke)
    copies = teacher_sets(cfg, device)
    images = torch.randint(
        0,
        256,
        (batch, 3, cfg.data.img_size, cfg.data.img_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    pixels = to_unit(images.to(device))
    errors, overlap = target_errors(copies, pixels[:64]), kept_overlap(copies, pixels[:64])
    fns = {f"teachers {p}": (lambda t=copies[p]: t(pixels)) for p in ("bf16", "fp8")}
    del copies["fp32"]
    if not args.no_step:
        for p in ("bf16", "fp8"):
            rig = StepRig(OmegaConf.merge(cfg, {"train": {"teacher_precision": p}}), device, batch)
            fns[f"step {p}"] = rig.step
    times = time_interleaved(fns, device, args.warmup, args.steps)
    step = {n: median(t) for n, t in times.items()}
    ratios = {
        what: step[f"{what} bf16"] / step[f"{what} fp8"] for what in ("teachers", "step") if f"{what} fp8" in step
    }
    print(f"device: {device}; batch {batch}; eager; random weights and images; medians of {args.steps}")
    print(f"{'target':<26}{'fp8 vs bf16':>13}{'bf16 vs fp32':>14}   (relative error, ||a - b|| / ||b||)")
    for name, e in errors.items():
        print(f"{name:<26}{e['fp8_vs_bf16']:>13.4f}{e['bf16_vs_fp32']:>14.4f}")
    if overlap is not None:
        print(f"kept tokens the FP8 picker shares with the bf16 one: {100 * overlap:.1f}%")
    for name, s in step.items():
        print(f"{name:<26}{batch / s:>10.1f} img/s{1e3 * s:>9.1f} ms")
    print("speed bf16 / fp8: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    write_result(
        args.out,
        {
            "part": "fp8",
            "device": str(device),
            "batch": batch,
            "errors": errors,
            "kept_overlap": overlap,
            "step_s": times,
            "median_s": step,
            "speedup": ratios,
            "smoke": args.smoke,
            "argv": argv,
        },
    )
    return 0
