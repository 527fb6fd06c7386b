"""FD's asymmetric encoder (paper B.1, figure 7) on timm's VisionTransformer and Block.

Feature-Distillation's student ViT (its models/vision_transformer.py with config.py MODEL.VIT and
configs/pretrain/fd_pretrain__deit_vit_base__img224__300ep.yaml) differs from the teacher's ViT by:
- INIT_VALUES 0.1: learnable per-channel scales gamma_1, gamma_2 on both residual branches: timm's
  LayerScale (`init_values`, keys `blocks.i.ls1.gamma`, `ls2.gamma`);
- USE_SHARED_RPB: one relative position bias table, zero-initialised, (2Gh-1)(2Gw-1) + 3 entries (the 3
  for CLS->patch, patch->CLS, CLS->CLS, BEiT's layout) by H heads, added to the attention logits of
  every block: softmax(q k^T * hd^-0.5 + B[idx]) v; here `rel_pos_bias.relative_position_bias_table`;
- USE_APE false: no absolute position embedding: timm's `pos_embed='none'`.
The blocks keep timm's Attention weights and keys; only their forward adds the bias (FDAttention).
"""

import torch
from timm.layers import Attention
from timm.layers.pos_embed_rel import gen_relative_position_index
from torch import nn

from .load import create_vit

FD_MODEL_KWARGS = {"init_values": 0.1, "pos_embed": "none"}


class SharedRelPosBias(nn.Module):
    """FD's RelativePositionBias (use_shared_rel_pos_bias): one table for all blocks."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(entries, num_heads))  # FD: zeros
        # (1 + L, 1 + L) table rows; timm builds BEiT's index, the one FD uses
        self.register_buffer("index", gen_relative_position_index(tuple(grid), class_token=True), persistent=False)

    def forward(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The additive bias (1, H, 1 + L, 1 + L), or at CLS + kept patches keep (B, K): (B, H, 1 + K, 1 + K)."""
        if keep is None:
            return self.relative_position_bias_table[self.index].permute(2, 0, 1).unsqueeze(0)
        rows = torch.cat([keep.new_zeros(keep.shape[0], 1), keep + 1], dim=1)  # (B, 1 + K)
        index = self.index[rows[:, :, None], rows[:, None, :]]  # (B, 1 + K, 1 + K)
        return self.relative_position_bias_table[index].permute(0, 3, 1, 2)


class FDAttention(Attention):
    """timm Attention plus the shared bias. The caller may pass the bias at its tokens as `attn_mask`
    (the student at its kept tokens); without one, the full grid's bias is added (every token present)."""

    shared_bias: SharedRelPosBias

    @classmethod
    def adopt(cls, attn: Attention, bias: SharedRelPosBias) -> "FDAttention":
        """The same module, weights and keys, with FD's forward; `bias` is owned by the model, not here."""
        attn.__class__ = cls
        object.__setattr__(attn, "shared_bias", bias)  # unregistered: one table in the state dict
        return attn

    def full_bias(self, num_tokens: int) -> torch.Tensor:
        bias = self.shared_bias()
        if bias.shape[-1] != num_tokens:
            raise ValueError(
                f"FD attention got {num_tokens} tokens but its bias covers {bias.shape[-1]} "
                "(CLS + every patch): pass the bias at the kept tokens as attn_mask"
            )
        return bias

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        bias = attn_mask if attn_mask is not None else self.full_bias(x.shape[1])
        device = x.device.type  # SDPA wants the mask in q's dtype: the autocast dtype when autocast is on
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return super().forward(x, attn_mask=bias.to(dtype), is_causal=is_causal)


def position_bias(attn: nn.Module, num_tokens: int) -> torch.Tensor | None:
    """The additive logit bias an attention module applies on its own: FD's, or None for timm's."""
    return attn.full_bias(num_tokens) if isinstance(attn, FDAttention) else None


def make_fd_encoder(model: nn.Module) -> nn.Module:
    """A timm ViT built with FD_MODEL_KWARGS -> FD's encoder: the shared bias, every block's attention adopted."""
    if model.num_prefix_tokens != 1 or model.pos_embed is not None:
        raise ValueError("student.fd_encoder needs a ViT with a CLS token only and pos_embed='none'")
    model.rel_pos_bias = SharedRelPosBias(model.patch_embed.grid_size, model.blocks[0].attn.num_heads)
    for block in model.blocks:
        FDAttention.adopt(block.attn, model.rel_pos_bias)
    return model


def create_student_vit(arch: str, model_kwargs: dict, fd_encoder: bool = False) -> nn.Module:
    """The student's timm ViT as configured (`student.arch`, `model_kwargs`, `fd_encoder`)."""
    if not fd_encoder:
        return create_vit(arch, **model_kwargs)
    return make_fd_encoder(create_vit(arch, **{**FD_MODEL_KWARGS, **model_kwargs}))
