"""`hybrid-distill bench --batch-sweep`: the training step (engine.train_step, the trainer's defaults:
bf16 teachers and autocast on CUDA) at growing batches until memory runs out: img/s, peak GiB and
the fraction of dense bf16 peak per batch, to find the largest batch per GPU and what it buys.

    hybrid-distill bench --batch-sweep --device cuda --batches 128,256,512,1024
"""

import argparse
import sys

import torch
from omegaconf import OmegaConf

from .harness import (
    RANDOM_VITB,
    StepRig,
    common_args,
    device_from,
    median,
    paper_config,
    peak_gib,
    synthetic_images,
    time_interleaved,
    write_result,
)
from .stop import Stop


def parse(argv, prog="hybrid-distill bench --batch-sweep", doc=__doc__, batches="128,256,512,1024"):
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    common_args(p, batch=None, steps=3)
    p.add_argument("--batches", default=batches, help="comma-separated batch sizes, tried in order until one fails")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teachers (recompiles per batch)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of configs/hybrid_vitb_mae_clip.yaml")
    return p.parse_intermixed_args(argv)


def try_batch(rig: StepRig, batch: int, warmup: int, steps: int, stop=None) -> dict | None:
    """One batch size: median seconds per step and peak GiB, or {'error': 'out of memory'}; None when
    `stop` ended it before a timed step."""
    device = rig.device
    rig.batch, rig.images = batch, synthetic_images(batch, rig.images.shape[-1], device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = time_interleaved({batch: rig.step}, device, warmup, steps, stop)[batch]
    except torch.OutOfMemoryError:
        rig.optimizer.zero_grad(set_to_none=True)
        rig.images = None
        torch.cuda.empty_cache()
        return {"batch": batch, "error": "out of memory", "peak_gib": peak_gib(device)}
    if not times:
        return None
    step = median(times)
    return {"batch": batch, "median_step_s": step, "images_per_s": batch / step, "peak_gib": peak_gib(device)}


def sweep(cfg, args, title: str) -> dict:
    from .command import bf16_peak_tflops

    device = device_from(args)
    batches = [int(b) for b in args.batches.split(",")]
    rig = StepRig(OmegaConf.merge(cfg, {"train": {"compile": bool(args.compile)}}), device, 2)
    gflop = rig.gflop_per_image()  # eager or compiled: the same FLOPs
    peak = bf16_peak_tflops(device)
    rows = []
    with Stop().watching() as stop:  # `timeout` ran out: report the batches done
        for batch in batches:
            if stop():
                print(f"stopped ({stop.reason}) before batch {batch}", file=sys.stderr)
                break
            row = try_batch(rig, batch, args.warmup, args.steps, stop)
            if row is None:
                print(f"stopped ({stop.reason}) during batch {batch}", file=sys.stderr)
                break
            rows.append(row)
            if "error" in row:
                break
    print(f"{title}; device: {device}; GFLOP/img {gflop:.1f}; medians of {args.steps}")
    print(f"{'batch':>7}{'img/s':>10}{'ms/step':>10}{'peak GiB':>10}{'% bf16 peak':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:>7}  {r['error']}")
            continue
        r["fraction_of_bf16_peak"] = gflop * r["images_per_s"] / 1e3 / peak if peak else None
        frac = f"{100 * r['fraction_of_bf16_peak']:.1f}" if peak else "-"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['batch']:>7}{r['images_per_s']:>10.1f}{1e3 * r['median_step_s']:>10.1f}{mem:>10}{frac:>13}")
    fits = [r["batch"] for r in rows if "error" not in r]
    print(f"largest batch that ran: {max(fits) if fits else 'none'}")
    return {
        "device": str(device),
        "gflop_per_image": gflop,
        "bf16_peak_tflops": peak,
        "rows": rows,
        "largest_batch": max(fits) if fits else None,
        "compiled": args.compile,
        "smoke": args.smoke,
    }


def main(argv=None) -> int:
    args = parse(argv)
    cfg = paper_config("hybrid_vitb_mae_clip", RANDOM_VITB, args.overrides, args.smoke)
    result = sweep(cfg, args, "ViT-B/16 student, CLIP ViT-B/16 + MAE ViT-B/16 teachers")
    write_result(args.out, {"part": "batch_sweep", **result, "argv": argv})
    return 0
