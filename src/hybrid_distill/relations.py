"""Token relations R = Q K^T (paper eq. 2) in the forms the config offers, for teacher and student alike."""
import torch

from .config import RelationHeads, RelationKind


def relation_form(logits: torch.Tensor, scale: float, kind: RelationKind,
                  heads: RelationHeads) -> torch.Tensor:
    """logits q k^T * hd^-0.5 (B, H, N, N) -> the distilled relation, (B, H, N, N) or (B, 1, N, N)."""
    if kind is RelationKind.raw:
        rel = logits / scale
    elif kind is RelationKind.softmax:
        rel = logits.float().softmax(dim=-1)
    else:
        rel = logits
    return rel.mean(dim=1, keepdim=True) if heads is RelationHeads.head_mean else rel


def resolve_block(index: int, depth: int, what: str) -> int:
    """Python-style block index (-1 is the last block) checked against the model's depth."""
    if not -depth <= index < depth:
        raise ValueError(f"{what}: block {index} does not exist in a model with {depth} blocks")
    return index % depth
