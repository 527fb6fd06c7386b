"""One distillation step (paper eq. 1), the optimiser and its per-step schedule.

The trainer and the bench both run `train_step`; the bench times it from outside and reads its phases
from profiler ranges. `bench/plain.py` is the one deliberate second implementation of the step, the
tests' oracle and the bench's baseline.
"""

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import record_function

from .data.transforms import to_unit
from .losses import distill_losses

# + SimMIM's / dBOT's mask token and FD's relative position bias table (their no_weight_decay lists)
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "mask_token", "relative_position_bias_table")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms (1-D) and position / prefix tokens (MAE, dBOT)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) on CUDA and CPU: faster than foreach (hybrid-distill
    bench at commit 225686b, '- fused_adamw': 1.02x on an H200, 1.03x on the CPU; README)."""
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters()) or None
    return torch.optim.AdamW(
        param_groups(model, optim_cfg.weight_decay), lr=0.0, betas=tuple(optim_cfg.betas), fused=fused
    )


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Linear warmup from 0, then half-cycle cosine to min_lr, per step (MAE util/lr_sched.py)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def forward_backward(
    student: nn.Module, teachers: nn.Module, pixels: torch.Tensor, ctx, scaler=None, accum: int = 1
) -> dict[str, torch.Tensor]:
    """Paper eq. 1 on one (micro-)batch of pixels (B, 3, H, W) in [0, 1]: the frozen teachers' targets
    (the MIM teacher picks the kept tokens), the student on CLS + kept tokens, the named loss parts,
    and the backward of loss / accum (scaled by `scaler` for fp16). Gradients accumulate in the
    student. Each stage is a profiler range (bench/phases.py reads them), free when no profiler runs."""
    targets = teachers(pixels)  # no grad, in the teachers' own precision
    with ctx.autocast():
        with record_function("student forward"):
            out = student(pixels, targets.keep)
        with record_function("losses"):
            parts = distill_losses(out, targets, ctx.loss_weights, ctx.beta)
    loss = parts["loss"] / accum
    with record_function("student backward"):
        (scaler.scale(loss) if scaler is not None else loss).backward()
    return parts


def train_step(
    student: nn.Module,
    teachers: nn.Module,
    micro_batches: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler,
    lr: float,
    ctx,
) -> dict[str, torch.Tensor]:
    """Accumulate over micro-batches of uint8 images, clip, step. Returns the loss parts, detached, averaged."""
    set_lr(optimizer, lr)
    totals: dict[str, torch.Tensor] = {}
    for i, images in enumerate(micro_batches):
        with record_function("input"):
            pixels = to_unit(images.to(ctx.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(student, "no_sync") else student.no_sync()
        with sync:
            parts = forward_backward(student, teachers, pixels, ctx, scaler, len(micro_batches))
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value.detach() / len(micro_batches)
    with record_function("optimiser"):
        totals.update(optimizer_step(student, optimizer, scaler, ctx.clip_grad, totals["loss"]))
    return totals


def optimizer_step(
    student: nn.Module, optimizer: torch.optim.Optimizer, scaler, clip_grad: float, loss: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Clip, step unless non-finite, clear the gradients: {'grad_norm', 'skipped'}."""
    scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(student.parameters(), clip_grad)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor over the shards
        grad_norm = grad_norm.full_tensor()
    # a non-finite loss or gradient skips the step on every rank alike (one host sync per step)
    skipped = (~torch.isfinite(grad_norm) | ~torch.isfinite(loss)).float()
    if dist.is_initialized():
        dist.all_reduce(skipped, op=dist.ReduceOp.MAX)
    if scaler.is_enabled() or not skipped.item():
        scaler.step(optimizer)  # fp16: the scaler skips on its own and lowers the scale
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": grad_norm, "skipped": skipped.bool()}
