"""Which weights an evaluation read: kept with its numbers, and in its file name, so that extending
a run writes a new result beside the old one instead of over it."""

from pathlib import Path

from hybrid_distill.files import CHECKPOINT_FORMAT, NotOurFile, newest_checkpoint, read, sha256_file


def model_source(spec: str) -> dict | None:
    """{'path', 'sha256', 'step'} of the file a model spec resolves to (step only for checkpoints);
    None for a timm name."""
    path = Path(spec)
    path = newest_checkpoint(path) if path.is_dir() else path
    if not path.is_file():
        return None
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "step": checkpoint_step(path)}


def checkpoint_step(path: Path) -> int | None:
    """The step of one of our checkpoints (memory-mapped: its tensors are not read); None for any other
    file, an official one included, which its own reader has read or refused."""
    try:
        return read(path, (CHECKPOINT_FORMAT,), mmap=True).get("step")
    except NotOurFile:
        return None


def source_tag(source: dict | None) -> str:
    """'-step00000012' for a checkpoint, '-sha' + 12 hex digits for a model file, '' for a timm name."""
    if source is None:
        return ""
    return f"-step{source['step']:08d}" if source["step"] is not None else f"-sha{source['sha256'][:12]}"
