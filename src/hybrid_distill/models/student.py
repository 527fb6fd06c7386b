"""The student: a plain timm VisionTransformer run on CLS + the kept patch tokens.

Its state_dict is the timm model's own (`backbone`), so exported weights need no renaming table;
the feature heads Linear(D_s -> D_t) live beside it and are saved apart (FD, dBOT).
"""
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import RelationHeads, RelationKind
from ..masking import all_indices
from ..relations import relation_form, resolve_block
from .attention import block_with_logits, check_block, choose_attention
from .tokens import Normalize, check_class_token, cls_and_patches, embed_tokens, keep_with_prefix


@dataclass
class StudentOutput:
    tokens: torch.Tensor  # (B, 1 + K, D_s) last block, final norm, CLS + kept (registers dropped)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B, 1 + K, D_t)
    relations: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # teacher -> block -> (B, H, 1+K, 1+K)


@dataclass
class RelationSpec:
    """A relation the student must produce for one teacher: its block (as configured, -1 the last) and
    form. The kind and heads are typed here once, whatever the caller passed."""
    teacher: str
    spec: int
    kind: RelationKind
    heads: RelationHeads

    def __post_init__(self):
        self.kind, self.heads = RelationKind(self.kind), RelationHeads(self.heads)


class Student(nn.Module):
    """`fused_attention`: SDPA in the blocks whose logits are not read (student_fused_attention)."""

    def __init__(self, backbone: nn.Module, mean, std, head_dims: dict[str, int],
                 relation_specs: list[RelationSpec], activation_checkpointing: bool = False,
                 fused_attention: bool = True):
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        for block in backbone.blocks:
            check_block(block)
        check_class_token(backbone, "the student")
        self.backbone = backbone
        self.fused_attention = fused_attention
        choose_attention(backbone, fused_attention)
        self.normalize = Normalize(mean, std)
        width = backbone.embed_dim
        self.heads = nn.ModuleDict({name: nn.Linear(width, dim) for name, dim in head_dims.items()})
        depth = len(backbone.blocks)
        self.relation_specs = [(r, resolve_block(r.spec, depth, f"student relation for teacher '{r.teacher}'"))
                               for r in relation_specs]
        self.relation_blocks = {block for _, block in self.relation_specs}

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> StudentOutput:
        """pixels (B, 3, H, W) in [0, 1]; keep (B, K) patch indices, None for all."""
        bb = self.backbone
        x = embed_tokens(bb, self.normalize(pixels))  # (B, P + L, D)
        P = bb.num_prefix_tokens
        if keep is not None:
            x = keep_with_prefix(x, keep, P)  # (B, P + K, D)
        logits = {}
        for i, block in enumerate(bb.blocks):
            if i in self.relation_blocks:
                x, logits[i] = self.run_block(block_with_logits, block, x)
            else:
                x = self.run_block(block, x)
        tokens = cls_and_patches(bb.norm(x), P)  # (B, 1 + K, D) CLS + kept patches
        return StudentOutput(tokens, {n: head(tokens) for n, head in self.heads.items()},
                             self.relations(logits, P))

    def run_block(self, fn, *args):
        """Activation checkpointing (recompute in backward) when set, for large students."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def relations(self, logits: dict[int, torch.Tensor], P: int) -> dict[str, dict[int, torch.Tensor]]:
        out: dict[str, dict[int, torch.Tensor]] = {}
        for r, block in self.relation_specs:
            lg = cls_and_patches(cls_and_patches(logits[block], P, 2), P, 3)  # (B, H, 1 + K, 1 + K)
            scale = self.backbone.blocks[block].attn.scale
            out.setdefault(r.teacher, {})[block] = relation_form(lg, scale, r.kind, r.heads)
        return out

    def forward_all(self, pixels: torch.Tensor) -> StudentOutput:
        """Every token kept: equals timm's forward_features on CLS + patches."""
        grid = self.backbone.patch_embed.grid_size
        return self.forward(pixels, all_indices(pixels.shape[0], grid[0] * grid[1], pixels.device))
