"""The student: a plain timm VisionTransformer run on CLS + the kept patch tokens.

Its state_dict is the timm model's own (`backbone`), so exported weights need no renaming table;
the feature heads Linear(D_s -> D_t), the optional decoder and the mask-reconstruction token live
beside it and are saved apart (FD, dBOT): they are trained, never exported. A target from an
earlier teacher block is matched at the student block `matching.py` names, through its own head.
"""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config_schema import MaskStyle, RelationHeads, RelationKind
from ..masking import all_indices, gather_tokens
from ..relations import form, resolve_block, student_target
from .attention import block_with_parts, check_block, choose_attention
from .decoder import Decoder
from .mask_recon import MaskRecon, visible_indices
from .tokens import Normalize, check_class_token, cls_and_patches, embed_tokens, keep_with_prefix


@dataclass
class StudentOutput:
    tokens: torch.Tensor  # (B, 1 + K, D_s) last block, final norm, CLS + kept (registers dropped)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B, 1 + K, D_t)
    # teacher -> teacher block -> what relations.py reads there (relations, MSA or block features)
    relations: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    loss_mask: torch.Tensor | None = None  # (B, 1 + K) bool: the tokens the feature loss reads (mask reconstruction)


@dataclass
class RelationSpec:
    """A relation-block target the student must produce for one teacher: the student block (as
    configured, -1 the last), the form, and the teacher block it matches (the target's key; None: the
    student block). The kind and heads are typed here once, whatever the caller passed."""

    teacher: str
    spec: int
    kind: RelationKind
    heads: RelationHeads
    key: int | None = None

    def __post_init__(self):
        self.kind, self.heads = RelationKind(self.kind), RelationHeads(self.heads)


def block_head_name(teacher: str, block: int) -> str:
    """The head of teacher block `block`'s features (relation_kind=features), beside the feature heads."""
    return f"{teacher}_block{block}"


class Student(nn.Module):
    """`fused_attention`: SDPA in the blocks whose logits are not read (student_fused_attention)."""

    def __init__(
        self,
        backbone: nn.Module,
        mean,
        std,
        head_dims: dict[str, int],
        relation_specs: list[RelationSpec],
        activation_checkpointing: bool = False,
        fused_attention: bool = True,
        decoder: Decoder | None = None,
        recon: MaskRecon | None = None,
        linear_heads: bool = True,
        feature_at: dict[str, int] | None = None,
    ):
        """head_dims: teacher (or block_head_name) -> target width; feature_at: teacher -> the student
        block whose output its head reads, for features of a teacher block other than the last."""
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
        head = (lambda dim: nn.Linear(width, dim)) if linear_heads else (lambda dim: nn.Identity())
        self.heads = nn.ModuleDict({name: head(dim) for name, dim in head_dims.items()})
        self.decoder, self.recon = decoder, recon  # dBOT's decoder blocks, mask reconstruction; None when off
        depth = len(backbone.blocks)
        self.relation_specs = [
            (r, resolve_block(r.spec, depth, f"student relation for teacher '{r.teacher}'")) for r in relation_specs
        ]
        self.relation_blocks = {block for _, block in self.relation_specs}
        self.feature_at = dict(feature_at or {})
        self.feature_heads = [
            n
            for n in head_dims
            if n not in {block_head_name(r.teacher, self.key(r, b)) for r, b in self.relation_specs}
        ]
        # blocks whose output tokens a head reads (intermediate features, T^i)
        self.output_blocks = set(self.feature_at.values()) | {
            b for r, b in self.relation_specs if not form(r.kind).reads_input
        }

    @staticmethod
    def key(spec: RelationSpec, block: int) -> int:
        return block if spec.key is None else spec.key

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> StudentOutput:
        """pixels (B, 3, H, W) in [0, 1]; keep (B, K) patch indices, None for all."""
        bb = self.backbone
        pixels = self.normalize(pixels)
        if keep is None:
            grid = bb.patch_embed.grid_size
            keep = all_indices(pixels.shape[0], grid[0] * grid[1], pixels.device)
        mask = self.recon.draw(pixels.shape[0], pixels.device) if self.recon is not None else None  # (B, L)
        x, seen = self.encoder_input(pixels, keep, mask)  # (B, P + K', D) at the patches seen (B, K')
        x, taps = self.encode(x, seen)
        P = bb.num_prefix_tokens
        tokens = cls_and_patches(x, P)  # (B, 1 + K', D) CLS + kept (dBOT: visible) patches
        decoded = tokens
        if self.decoder is not None:  # dBOT: mask tokens fill the masked patches; else the same tokens
            decoded = self.decoder(tokens, seen, mask if self.style is MaskStyle.dbot else None)
        return StudentOutput(
            tokens, self.features(decoded, taps, P), self.relations(taps, P), self.loss_mask(mask, keep)
        )

    def features(self, decoded: torch.Tensor, taps: dict, P: int) -> dict[str, torch.Tensor]:
        """Each feature head on the last block's (decoded) tokens, or on its matched block's output."""
        return {
            n: self.heads[n](cls_and_patches(taps[self.feature_at[n]][2], P) if n in self.feature_at else decoded)
            for n in self.feature_heads
        }

    @property
    def style(self) -> MaskStyle:
        return self.recon.style if self.recon is not None else MaskStyle.none

    def encoder_input(self, pixels: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor | None):
        """The encoder's tokens and their patch indices: the kept patches (simmim: the masked ones as the
        mask token), or dbot's visible patches only."""
        bb = self.backbone
        x = self.recon.embed(bb, pixels, mask) if self.style is MaskStyle.simmim else embed_tokens(bb, pixels)
        seen = visible_indices(mask) if self.style is MaskStyle.dbot else keep
        return keep_with_prefix(x, seen, bb.num_prefix_tokens), seen

    def encode(self, x: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The blocks and final norm on tokens at patches `seen`; at the blocks targets read, their taps
        (logits, per-head outputs, output tokens)."""
        bb = self.backbone
        bias = bb.rel_pos_bias(seen) if hasattr(bb, "rel_pos_bias") else None  # FD's encoder, at these tokens
        taps = {}
        for i, block in enumerate(bb.blocks):
            if i in self.relation_blocks:
                x, logits, heads = self.run_block(block_with_parts, block, x, bias)
                taps[i] = (logits, heads, x)
            else:
                x = self.run_block(nn.Module.__call__, block, x, bias)
                if i in self.output_blocks:
                    taps[i] = (None, None, x)
        return bb.norm(x), taps

    def loss_mask(self, mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        """(B, 1 + K) bool over the predicted tokens: the masked patches, and CLS for dbot (its loss
        counts CLS as masked, dBOT models_mae.py `forward_encoder`); None without mask reconstruction."""
        if mask is None:
            return None
        cls = mask.new_full((mask.shape[0], 1), self.style is MaskStyle.dbot)
        return torch.cat([cls, gather_tokens(mask.unsqueeze(-1), keep).squeeze(-1)], dim=1)

    def run_block(self, fn, block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None):
        """fn(block, x[, bias]), with activation checkpointing (recompute in backward) when set, for large
        students; `bias` is FD's relative position bias (an additive attention mask) or None."""
        args = (block, x) if bias is None else (block, x, bias)  # timm's fused path stays mask-free without FD
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def relations(self, taps: dict, P: int) -> dict[str, dict[int, torch.Tensor]]:
        """What each relation spec reads at its student block, keyed by the teacher block it matches."""
        out: dict[str, dict[int, torch.Tensor]] = {}
        for r, block in self.relation_specs:
            out.setdefault(r.teacher, {})[self.key(r, block)] = self.block_target(r, block, taps[block], P)
        return out

    def block_target(self, r: RelationSpec, block: int, tap, P: int) -> torch.Tensor:
        head = self.heads[block_head_name(r.teacher, self.key(r, block))] if form(r.kind).tokens else None
        return student_target(
            r.kind, r.heads, self.backbone.blocks[block].attn, tap, lambda t, dim: cls_and_patches(t, P, dim), head
        )

    def forward_all(self, pixels: torch.Tensor) -> StudentOutput:
        """Every token kept: equals timm's forward_features on CLS + patches."""
        grid = self.backbone.patch_embed.grid_size
        return self.forward(pixels, all_indices(pixels.shape[0], grid[0] * grid[1], pixels.device))
