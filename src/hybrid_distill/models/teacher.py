"""A frozen teacher: a timm ViT that owns its normalisation, stays in eval mode and has no gradients.

It sees the full image (paper eq. 1: T(x) ⊙ M) and returns its targets at the kept tokens only:
features at one block, and the inputs needed for relations at others. The teacher that picks tokens
(the MIM teacher) drops redundant tokens after the selection blocks (paper eq. 4).
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, TeacherConfig
from ..masking import all_indices, cls_and_kept, gather_tokens, keep_with_prefix, least_redundant, positions_within
from ..relations import relation_form, resolve_block
from .attention import attention_logits, check_block
from .load import mean_std
from .tokens import Normalize, embed_tokens, grid_size, image_size


@dataclass
class TeacherOutput:
    keep: torch.Tensor  # (B, K) kept patch indices
    features: torch.Tensor | None = None  # (B, 1 + K, D_t)
    relations: dict[int, torch.Tensor] = field(default_factory=dict)  # block spec -> (B, H, 1 + K, 1 + K)


def build_teacher_model(name: str, cfg: TeacherConfig, student_grid=None) -> tuple[nn.Module, dict]:
    """The timm backbone and a manifest record (file, sha256, source, licence). With match_grid, a
    teacher of another patch size or resolution is built at the input size that gives the student's
    grid, its position embeddings interpolated by timm (e.g. a /14 teacher at 196 px for /16 at 224)."""
    from ..weights import build_teacher_backbone
    from ..weights.grid import grid_model_kwargs
    kwargs = dict(cfg.model_kwargs)
    if cfg.match_grid and student_grid is not None:
        kwargs = grid_model_kwargs(cfg.arch, tuple(student_grid), kwargs)
    file = None if cfg.weights in ("pretrained", "random") else cfg.weights
    return build_teacher_backbone(cfg.arch, file=file, pretrained=cfg.weights == "pretrained", model_kwargs=kwargs)


class Teacher(nn.Module):
    """Frozen ViT teacher; `.train()` never takes it out of eval mode."""

    def __init__(self, name: str, cfg: TeacherConfig, model: nn.Module, student_grid: tuple[int, int]):
        super().__init__()
        for block in model.blocks:
            check_block(block)
        if grid_size(model) != tuple(student_grid):
            patch = model.patch_embed.patch_size[0]
            raise ConfigError(
                f"teacher '{name}' has a {grid_size(model)} token grid but the student has {tuple(student_grid)}; "
                f"set teachers.{name}.match_grid=true or teachers.{name}.model_kwargs.img_size={student_grid[0] * patch}")
        self.name, self.cfg, self.model = name, cfg, model.requires_grad_(False)
        self.normalize = Normalize(*mean_std(model))
        depth = len(model.blocks)
        self.feature_block = resolve_block(cfg.feature_block, depth, f"teachers.{name}.feature_block")
        self.relation_at = {resolve_block(b, depth, f"teachers.{name}.relation_blocks"): b
                            for b in cfg.relation_blocks}
        self.eval()

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return self.model.blocks[0].attn.num_heads

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] at the student's size -> (B, P + L, D), resized to this teacher's input size."""
        size = image_size(self.model)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        return embed_tokens(self.model, self.normalize(pixels))

    def last_needed_block(self, select: dict[int, int] | None) -> int:
        needed = list(self.relation_at) + list(select or {})
        return max(needed + ([self.feature_block] if self.cfg.features else []))

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None,
                select: dict[int, int] | None = None, prune: bool = False) -> TeacherOutput:
        """Run the blocks up to the last one needed. `select` maps a block to the number of patches
        kept after it (the token picker); `keep` is the final keep set chosen by another teacher."""
        x = self.embed(pixels)  # (B, P + L, D)
        P = self.model.num_prefix_tokens
        B, L = x.shape[0], x.shape[1] - P
        kept = keep if keep is not None else all_indices(B, L, x.device)
        present = None  # which patches x holds, sorted (None: all of them)
        saved, feats = {}, None
        for i in range(self.last_needed_block(select) + 1):
            block = self.model.blocks[i]
            if i in self.relation_at:
                saved[i] = (block.norm1(x), present)
            x = block(x)
            if select and i in select:
                current = gather_tokens(x[:, P:], positions_within(present, kept))  # (B, n, D)
                kept = kept.gather(1, least_redundant(current, select[i]))
                if prune:
                    x, present = keep_with_prefix(x, positions_within(present, kept), P), kept
            if self.cfg.features and i == self.feature_block:
                feats = (x, present)
        return TeacherOutput(kept, self.feature_target(feats, kept), self.relation_targets(saved, kept))

    def feature_target(self, feats, kept: torch.Tensor) -> torch.Tensor | None:
        """Block output -> final norm -> per-token LayerNorm without affine (FD), at CLS + kept."""
        if feats is None:
            return None
        x, present = feats
        x = cls_and_kept(x, positions_within(present, kept), self.model.num_prefix_tokens)
        if self.cfg.final_norm:
            x = self.model.norm(x)
        return F.layer_norm(x, x.shape[-1:]) if self.cfg.whiten else x

    def relation_targets(self, saved: dict, kept: torch.Tensor) -> dict[int, torch.Tensor]:
        """q k^T * hd^-0.5 from each block's own projection, on CLS + kept rows and columns only."""
        out = {}
        for i, (normed, present) in saved.items():
            rows = cls_and_kept(normed, positions_within(present, kept), self.model.num_prefix_tokens)
            attn = self.model.blocks[i].attn
            out[self.relation_at[i]] = relation_form(attention_logits(attn, rows), attn.scale,
                                                     self.cfg.relation_kind, self.cfg.relation_heads)
        return out
