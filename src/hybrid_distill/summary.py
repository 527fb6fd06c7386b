"""What a run is about to do, printed before its first step (and all that `train --dry-run` prints)."""


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def teacher_line(name: str, record: dict) -> str:
    sha = (record.get("sha256") or "")[:12] or "none"
    return f"  teacher {name}: {record.get('arch')} from {record.get('source')} (sha256 {sha}, licence {record.get('license')})"


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
    return "\n".join(lines + [teacher_line(n, r) for n, r in trainer.records.items()])
