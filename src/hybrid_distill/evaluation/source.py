"""Which weights an evaluation read: kept with its numbers, and in its file name, so that extending
a run writes a new result beside the old one instead of over it."""

from pathlib import Path

import torch

from hybrid_distill.files import CHECKPOINT_FORMAT, newest_checkpoint, sha256_file


def model_source(spec: str) -> dict | None:
    """{'path', 'sha256', 'step'} of the file a model spec resolves to (step only for checkpoints);
    None for a timm name."""
    path = Path(spec)
    path = newest_checkpoint(path) if path.is_dir() else path
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    step = payload.get("step") if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT else None
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "step": step}


def source_tag(source: dict | None) -> str:
    """'-step00000012' for a checkpoint, '-sha' + 12 hex digits for a model file, '' for a timm name."""
    if source is None:
        return ""
    return f"-step{source['step']:08d}" if source["step"] is not None else f"-sha{source['sha256'][:12]}"
