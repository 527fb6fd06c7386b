"""What a teacher gives at a block and the student matches at its own (paper eq. 2, Tables 5/6 "T'_m"):
the token relation R = Q K^T in the forms the config offers, MSA^i, or the block's output tokens T^i.

Every target kind lives here: its `Form` (what it reads, what the models around it must provide) and
its two sides, `teacher_target` and `student_target`. Adding a kind touches `config.RelationKind` and
this file (and `models/attention.block_with_parts` if the student must tap a part of its blocks not
tapped yet). Shapes: B batch, H heads, N tokens, hd head dim, D width.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config_schema import ConfigError, RelationHeads, RelationKind
from .models.attention import attention_logits, qkv_heads


@dataclass(frozen=True)
class Form:
    reads_input: bool  # from the block's normed input (its q, k, v), so the teacher stops before the block
    per_head: bool  # (B, H, ...): the student needs the teacher's head count, or relation_heads=head_mean
    tokens: bool = False  # (B, 1 + K, D) tokens: the student maps its own through a Linear head, the
    #                       teacher's are whitened like its features
    head_width: bool = False  # compared per head with no head between them: equal head widths needed


FORMS = {
    RelationKind.raw: Form(reads_input=True, per_head=True),  # eq. 2's R = Q K^T
    RelationKind.scaled: Form(reads_input=True, per_head=True),  # Q K^T / sqrt(hd), MSA's logits
    RelationKind.softmax: Form(reads_input=True, per_head=True),  # the attention map
    RelationKind.msa: Form(reads_input=True, per_head=True, head_width=True),  # MSA^i, per head
    RelationKind.features: Form(reads_input=False, per_head=False, tokens=True),  # T^i
}


def form(kind) -> Form:
    return FORMS[RelationKind(kind)]


def relation_form(logits: torch.Tensor, scale: float, kind: RelationKind, heads: RelationHeads) -> torch.Tensor:
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


def msa_heads(attn, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
    """eq. 2's MSA^i = Softmax(Q K^T / sqrt(hd)) V per head from a block's normed input x (B, N, D):
    (B, H, N, hd), read before timm's `attn.norm` and output projection `attn.proj` (the concatenation
    of heads that eq. 2 writes as MSA is what `proj` maps). rope: x's patches' rotary embedding (Eva)."""
    q, k, v = qkv_heads(attn, x, rope)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def teacher_target(
    kind: RelationKind,
    heads: RelationHeads,
    attn: nn.Module,
    x: torch.Tensor,
    read: Callable[[torch.Tensor], torch.Tensor],
    rope: torch.Tensor | None = None,
    rope_read: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's target at one block, fp32 (token targets in the teacher's dtype: it finishes them
    like its features, `Teacher.finish_tokens`). x (B, N, D): the block's normed input (`reads_input`) or
    its output; read: (B, N, ...) -> (B, 1 + K, ...) at CLS + the kept tokens; rope, rope_read: the rotary
    embedding (Eva family, `tokens.rope_at`) of x's patches and of the kept ones.
    Relations use q k^T of the kept rows and columns only (q and k are per token, so these equal the rows
    and columns of the full N x N logits). MSA keys every token present (eq. 1 masks the output,
    T(x) ⊙ M) and reads the kept rows."""
    if kind is RelationKind.features:
        return read(x)
    if kind is RelationKind.msa:
        out = msa_heads(attn, x, rope)  # (B, H, N, hd)
        B, H, N, hd = out.shape
        flat = read(out.transpose(1, 2).reshape(B, N, H * hd))  # (B, 1 + K, H * hd)
        return head_form(flat.view(B, -1, H, hd).transpose(1, 2).float(), heads)
    logits = attention_logits(attn, read(x), rope_read)  # (B, H, 1 + K, 1 + K)
    return relation_form(logits.float(), attn.scale, kind, heads)


def student_target(
    kind: RelationKind,
    heads: RelationHeads,
    attn: nn.Module,
    tap: tuple,
    read: Callable[[torch.Tensor, int], torch.Tensor],
    project: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The student's side of the same target from its block's tap (logits (B, H, N, N), per-head outputs
    (B, H, N, hd), output tokens (B, N, D); `models/attention.block_with_parts`); read(t, dim): axis dim
    to CLS + kept; project: the student's head for token targets."""
    logits, per_head, out = tap
    if kind is RelationKind.features:
        return project(read(out, 1))
    if kind is RelationKind.msa:
        return head_form(read(per_head, 2), heads)  # (B, H, 1 + K, hd)
    return relation_form(read(read(logits, 2), 3), attn.scale, kind, heads)  # (B, H, 1 + K, 1 + K)


def resolve_block(index: int, depth: int, what: str) -> int:
    """Python-style block index (-1 is the last block) checked against the model's depth."""
    if not -depth <= index < depth:
        raise ConfigError(
            f"{what}: block {index} does not exist in a model with {depth} blocks "
            f"(0..{depth - 1}, or -1..-{depth} from the end)"
        )
    return index % depth
