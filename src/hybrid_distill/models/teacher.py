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
        self.trim = True  # stop after the last needed block, kept rows only after the final selection
        self.kept_relations = True  # relations from q and k at CLS + kept rows only (else N x N, then gathered)
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
        dtype = self.model.patch_embed.proj.weight.dtype  # bf16 once TeacherSet.cast(torch.bfloat16)
        return embed_tokens(self.model, self.normalize(pixels).to(dtype))

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
        last = self.last_needed_block(select) if self.trim else self.depth - 1
        for i in range(last + 1):
            block = self.model.blocks[i]
            if i in self.relation_at:
                saved[i] = (block.norm1(x), present)
            mode = self.block_mode(i, last, max(select) if select else -1)
            if mode == "skip":
                break
            if mode == "rows":
                x, present = block_at_rows(block, x, prefix_and(positions_within(present, kept), P)), kept
            else:
                x = block(x)
            if select and i in select:
                current = gather_tokens(x[:, P:], positions_within(present, kept))  # (B, n, D)
                kept = kept.gather(1, least_redundant(current, select[i]))
                if prune:
                    x, present = keep_with_prefix(x, positions_within(present, kept), P), kept
            if self.cfg.features and i == self.feature_block:
                feats = (x, present)
        return TeacherOutput(kept, self.feature_target(feats, kept), self.relation_targets(saved, kept))

    def block_mode(self, i: int, last: int, final_select: int) -> str:
        """'full', 'rows' (queries, projection and MLP on the prefix + kept rows only) or 'skip'.

        Once the keep set is final (after the last selection block), targets read only kept rows: the
        last needed block runs on kept rows (features), or not at all when only its q and k at kept
        rows are read (relations); the block before a relation-only last block then needs kept rows
        only too, since those q and k come from its kept outputs alone."""
        if not self.trim or i <= final_select:
            return "full"
        last_is_feature = self.cfg.features and self.feature_block == last
        if i == last:
            return "rows" if last_is_feature else "skip"
        return "rows" if i == last - 1 and not last_is_feature else "full"

    def feature_target(self, feats, kept: torch.Tensor) -> torch.Tensor | None:
        """Block output -> final norm -> per-token LayerNorm without affine (FD), at CLS + kept."""
        if feats is None:
            return None
        x, present = feats
        x = cls_and_kept(x, positions_within(present, kept), self.model.num_prefix_tokens)
        if self.cfg.final_norm:
            x = self.model.norm(x)
        x = x.float()  # targets in fp32 whatever the teacher's dtype
        return F.layer_norm(x, x.shape[-1:]) if self.cfg.whiten else x

    def relation_targets(self, saved: dict, kept: torch.Tensor) -> dict[int, torch.Tensor]:
        """q k^T * hd^-0.5 from each block's own projection, on CLS + kept rows and columns only."""
        out = {}
        for i, (normed, present) in saved.items():
            attn = self.model.blocks[i].attn
            index = positions_within(present, kept)
            if self.kept_relations:
                logits = attention_logits(attn, cls_and_kept(normed, index, self.model.num_prefix_tokens))
            else:
                rows = prefix_and(index, self.model.num_prefix_tokens, 1)  # CLS + kept token indices
                logits = gather_relation(attention_logits(attn, normed), rows)
            out[self.relation_at[i]] = relation_form(logits.float(), attn.scale, self.cfg.relation_kind,
                                                     self.cfg.relation_heads)
        return out


def prefix_and(index: torch.Tensor, num_prefix: int, keep_prefix: int | None = None) -> torch.Tensor:
    """(B, K) patch indices -> (B, p + K) token indices: the first p prefix tokens (all P by default),
    then the patches shifted past the P prefix tokens."""
    p = num_prefix if keep_prefix is None else keep_prefix
    prefix = torch.arange(p, device=index.device).expand(index.shape[0], p)
    return torch.cat([prefix, index + num_prefix], dim=1)


def gather_relation(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) at token indices (B, R) on both axes -> (B, H, R, R)."""
    H, N, R = logits.shape[1], logits.shape[-1], rows.shape[1]
    logits = logits.gather(2, rows[:, None, :, None].expand(-1, H, R, N))
    return logits.gather(3, rows[:, None, None, :].expand(-1, H, R, R))


def block_at_rows(block: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """timm Block.forward in eval mode at token rows (B, R) only: equals gather(block(x), rows).

    Queries, projection and MLP run on those rows; keys and values on every token, split from the
    block's own qkv weight (timm layers/attention.py, Attention.forward)."""
    attn = block.attn
    B, N, _ = x.shape
    R, H, hd = rows.shape[1], attn.num_heads, attn.head_dim
    h = block.norm1(x)  # (B, N, D)
    h_rows = gather_tokens(h, rows)  # (B, R, D)
    w_q, w_kv = attn.qkv.weight.split([H * hd, 2 * H * hd])
    b_q, b_kv = attn.qkv.bias.split([H * hd, 2 * H * hd]) if attn.qkv.bias is not None else (None, None)
    q = F.linear(h_rows, w_q, b_q).reshape(B, R, H, hd).transpose(1, 2)  # (B, H, R, hd)
    k, v = F.linear(h, w_kv, b_kv).reshape(B, N, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = attn.norm(out.transpose(1, 2).reshape(B, R, H * hd))  # (B, R, D)
    if attn.gate is not None:
        out = out * attn.gate(h_rows).sigmoid()
    y = gather_tokens(x, rows) + block.ls1(attn.proj(out))
    return y + block.ls2(block.mlp(block.norm2(y)))
