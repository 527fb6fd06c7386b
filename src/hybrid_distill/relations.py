"""What a teacher gives at a block and the student matches at its own (paper eq. 2, Tables 5/6 "T'_m"):
the token relation R = Q K^T in the forms the config offers, MSA^i, or the block's output tokens T^i.
For teacher and student alike. Shapes: B batch, H heads, N tokens, hd head dim, D width.
"""
import torch

from .config import ConfigError, RelationHeads, RelationKind
from .models.attention import qkv_heads

# kinds read from a block's normed input (its q, k, v); `features` is read from the block's output
FROM_INPUT = (RelationKind.raw, RelationKind.scaled, RelationKind.softmax, RelationKind.msa)
PER_HEAD = (RelationKind.raw, RelationKind.scaled, RelationKind.softmax, RelationKind.msa)


def relation_form(logits: torch.Tensor, scale: float, kind: RelationKind,
                  heads: RelationHeads) -> torch.Tensor:
    """logits q k^T * hd^-0.5 (B, H, N, N) -> the distilled relation, (B, H, N, N) or (B, 1, N, N).
    `raw` undoes the scale: eq. 2's R = Q K^T has no 1/sqrt(d), which appears only inside MSA's softmax."""
    if kind is RelationKind.raw:
        rel = logits / scale
    elif kind is RelationKind.softmax:
        rel = logits.float().softmax(dim=-1)
    else:
        rel = logits
    return head_form(rel, heads)


def head_form(x: torch.Tensor, heads: RelationHeads) -> torch.Tensor:
    """(B, H, ...) per head, or the mean over heads (B, 1, ...) for students of another head count."""
    return x.mean(dim=1, keepdim=True) if heads is RelationHeads.head_mean else x


def msa_heads(attn, x: torch.Tensor) -> torch.Tensor:
    """eq. 2's MSA^i = Softmax(Q K^T / sqrt(hd)) V per head from a block's normed input x (B, N, D):
    (B, H, N, hd), read before timm's `attn.norm` and output projection `attn.proj` (the concatenation
    of heads that eq. 2 writes as MSA is what `proj` maps)."""
    q, k, v = qkv_heads(attn, x)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def resolve_block(index: int, depth: int, what: str) -> int:
    """Python-style block index (-1 is the last block) checked against the model's depth."""
    if not -depth <= index < depth:
        raise ConfigError(f"{what}: block {index} does not exist in a model with {depth} blocks "
                          f"(0..{depth - 1}, or -1..-{depth} from the end)")
    return index % depth
