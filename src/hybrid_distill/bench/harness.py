"""What the bench's extra parts share: configs with random teachers (or tiny models for a CPU smoke
run), the trainer's own step (`engine.train_step`) on synthetic uint8 batches, interleaved timing,
FLOPs, peak memory and the JSON record of a result."""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..build import build_models
from ..config import load_config
from ..engine import build_optimizer, train_step
from ..models.attention import student_fused_attention
from ..provenance import provenance
from ..runtime import RunContext, amp_dtype, pick_device, seed_everything
from .flops import SDPA_CPU

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
# the paper's ViT-B teachers with random weights: the same FLOPs and time, nothing downloaded
RANDOM_VITB = {"clip": "vit_base_patch16_clip_quickgelu_224", "mim": "vit_base_patch16_224"}
# a few-second CPU stand-in for any ViT: 32 px, 8 px patches (a 4 x 4 grid), 4 blocks of width 48
SMOKE = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3}


def common_args(p: argparse.ArgumentParser, batch: int | None, steps: int = 5) -> argparse.ArgumentParser:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch", type=int, default=batch, help="images per step")
    p.add_argument("--steps", type=int, default=steps, help="timed repeats (medians are reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument("--smoke", action="store_true", help="tiny models at 32 px: checks the code path in seconds")
    p.add_argument("--out", default=None, help="result JSON")
    return p


def paper_config(name: str, arches: dict[str, str], overrides: list[str], smoke: bool):
    """configs/<name>.yaml with random teachers of the given timm names; tiny everything with smoke."""
    path = CONFIGS / f"{name}.yaml"
    names = list(load_config(path).teachers)
    extra = [f"teachers.{t}.weights=random" for t in names]
    extra += [f"teachers.{t}.arch={arches[t]}" for t in names if t in arches]
    return load_config(path, extra + (smoke_overrides(names) if smoke else []) + list(overrides))


def smoke_overrides(teacher_names) -> list[str]:
    """Dotted overrides that shrink the student and every teacher to SMOKE."""
    extra = [f"data.img_size={SMOKE['img_size']}"]
    for prefix in ["student"] + [f"teachers.{t}" for t in teacher_names]:
        extra += [f"{prefix}.model_kwargs.{k}={v}" for k, v in SMOKE.items()]
    return extra


class StepRig:
    """Student, teachers, optimiser and run context of one config, stepped by engine.train_step; built
    as the trainer builds them (seeded: the same config gives the same weights)."""

    def __init__(self, cfg, device: torch.device, batch: int):
        seed_everything(cfg.seed)
        dtype = amp_dtype(cfg.train.amp, device)
        self.student, self.teachers, _ = build_models(cfg, student_fused_attention(device), device, dtype)
        self.student.to(device).train()
        if cfg.train.compile:  # in place, as the trainer
            self.student.compile()
            self.teachers.compile()
        self.precision = self.teachers.precision
        self.optimizer = build_optimizer(self.student, cfg.optim)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        self.run = RunContext(
            device,
            dtype,
            {n: t.weight for n, t in cfg.teachers.items()},
            cfg.loss.beta,
            cfg.optim.clip_grad or float("inf"),
        )
        self.device, self.batch = device, batch
        self.images = synthetic_images(batch, cfg.data.img_size, device)

    def step(self, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One engine.train_step on `images` (uint8), or on the rig's own synthetic batch."""
        images = self.images if images is None else images
        return train_step(self.student, self.teachers, [images], self.optimizer, self.scaler, 1e-4, self.run)

    def gflop_per_image(self) -> float:
        counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
        with counter:
            self.step()
        return counter.get_total_flops() / self.batch / 1e9


def synthetic_images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    images = torch.randint(
        0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return images.pin_memory() if device.type == "cuda" else images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, device: torch.device, warmup: int, steps: int, stop=None) -> dict[str, list[float]]:
    """Seconds per call of every function, called in turn (order rotated each repeat), warm-up dropped;
    `stop` (bench/stop.py) is read before every call: the calls timed so far are returned."""
    names, times = list(fns), {n: [] for n in fns}
    for r in range(warmup + steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if stop is not None and stop():
                return times
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
        print(f"repeat {r + 1}/{warmup + steps} done", file=sys.stderr, flush=True)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_from(args) -> torch.device:
    return pick_device(args.device, "--device")


def write_result(path: str | None, result: dict) -> None:
    """The result with its provenance (commit, versions, device), as JSON."""
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "provenance": provenance()}, indent=2))
    print(f"written: {out}")
