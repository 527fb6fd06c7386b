"""What a run is about to do, printed before its first step (and all that `train --dry-run` prints)."""


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def teacher_line(name: str, record: dict) -> str:
    sha = (record.get("sha256") or "")[:12] or "none"
    geometry = ""
    if record.get("grid"):
        (h, w), (ph, pw), (gh, gw) = record["img_size"], record["patch_size"], record["grid"]
        geometry = f", {h}x{w} px in, {ph}x{pw} patches, {gh}x{gw} grid, {record['prefix_tokens']} prefix token(s)"
    return (
        f"  teacher {name}: {record.get('arch')} from {record.get('source')} (sha256 {sha}{geometry}, "
        f"licence {record.get('license')})"
    )


def top_lr(trainer, warmup: int) -> float:
    """The highest lr the run reaches: at the end of its warm-up, or at its last step if that comes first."""
    from .engine import lr_at

    o = trainer.cfg.optim
    peak_step = min(warmup, trainer.last_step())
    return lr_at(peak_step, trainer.total_steps, warmup, o.blr * o.batch_size / 256, o.min_lr)


def startup_summary(trainer) -> str:
    """Parameters, images, steps, effective lr, run directory and teachers of a built Trainer."""
    cfg, o = trainer.cfg, trainer.cfg.optim
    trainable = sum(p.numel() for p in trainer.student.parameters() if p.requires_grad)
    backbone = sum(p.numel() for p in trainer.student.backbone.parameters())
    lines = [
        f"run directory: {trainer.run_dir}",
        f"student: {cfg.student.arch}, {_count(backbone)} backbone parameters ({_count(trainable)} trained with heads)",
        f"data: {len(trainer.dataset):,} images ({cfg.data.dataset}), global batch {o.batch_size} = "
        f"{trainer.dist.world} process(es) x {trainer.micro_batch} x {o.accum_steps} accumulation",
        f"schedule: {trainer.steps_per_epoch} steps per epoch x {cfg.train.epochs} epochs = {trainer.total_steps} "
        f"steps (stopping at {trainer.last_step()}), starting at step {trainer.step}",
        f"lr: {o.blr * o.batch_size / 256:.3g} peak (blr {o.blr:g} x {o.batch_size} / 256), "
        f"{o.warmup_epochs:g} warm-up epochs, cosine to {o.min_lr:g}",
        f"device: {trainer.device}, amp {cfg.train.amp.value if hasattr(cfg.train.amp, 'value') else cfg.train.amp}",
    ]
    warmup = int(o.warmup_epochs * trainer.steps_per_epoch)
    if warmup * 2 >= trainer.last_step() > 0:  # e.g. a 300-epoch config shrunk for a test keeps 40 warm-up epochs
        lines.append(
            f"warning: the warm-up ({warmup} steps) is half the run ({trainer.last_step()} steps) or more: the "
            f"lr reaches at most {top_lr(trainer, warmup):.3g}; lower "
            "optim.warmup_epochs"
        )
    return "\n".join(lines + [teacher_line(n, r) for n, r in trainer.records.items()])
