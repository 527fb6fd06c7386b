"""`hybrid-distill bench --versus-distill`: the Hybrid step against the Distill-CLIP step, same process.

Paper appendix D: Hybrid Distill trains about 1.2x slower than single-teacher distillation. Here both
are the trainer's own step (engine.train_step) on the same student: Hybrid with the CLIP feature and
MAE relation teachers and progressive masking to 66 of 196 tokens (configs/hybrid_vitb_mae_clip.yaml),
Distill-CLIP with the CLIP teacher alone on every token (configs/distill_vitb_clip.yaml). Random
teacher weights (the same time). Default precision of the trainer: bf16 on CUDA, fp32 on the CPU.

    hybrid-distill bench --versus-distill --device cpu --batch 8 --steps 5
"""

import argparse

import torch

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

CONFIG_NAMES = {"hybrid": "hybrid_vitb_mae_clip", "distill_clip": "distill_vitb_clip"}


def parse(argv):
    p = argparse.ArgumentParser(prog="hybrid-distill bench --versus-distill", description=__doc__.split("\n\n")[0])
    common_args(p, batch=None)
    p.add_argument("--student", default=None, help="student timm name (default: the configs' ViT-B/16)")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teachers (train.compile)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to both configs")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = device_from(args)
    batch = args.batch or (128 if device.type == "cuda" else 8)
    extra = list(args.overrides) + ([f"student.arch={args.student}"] if args.student else [])
    extra += ["train.compile=true"] if args.compile else []
    rigs = {}
    for name, config in CONFIG_NAMES.items():
        rigs[name] = StepRig(paper_config(config, RANDOM_VITB, extra, args.smoke), device, batch)
    gflop = {n: r.gflop_per_image() for n, r in rigs.items()}
    times = time_interleaved({n: r.step for n, r in rigs.items()}, device, args.warmup, args.steps)
    step = {n: median(t) for n, t in times.items()}
    ratio = step["hybrid"] / step["distill_clip"]
    print(f"device: {device}; batch {batch}; medians of {args.steps}; trainer step (engine.train_step)")
    print(f"{'step':<16}{'img/s':>9}{'ms/step':>10}{'GFLOP/img':>11}")
    for n in rigs:
        print(f"{n:<16}{batch / step[n]:>9.1f}{1e3 * step[n]:>10.1f}{gflop[n]:>11.1f}")
    print(f"Hybrid / Distill-CLIP step time: {ratio:.2f}x (paper appendix D: about 1.2x)")
    write_result(
        args.out,
        {
            "part": "versus_distill",
            "device": str(device),
            "batch": batch,
            "compiled": args.compile,
            "step_s": times,
            "median_step_s": step,
            "gflop_per_image": gflop,
            "hybrid_over_distill": ratio,
            "threads": torch.get_num_threads(),
            "smoke": args.smoke,
            "argv": argv,
        },
    )
    return 0
