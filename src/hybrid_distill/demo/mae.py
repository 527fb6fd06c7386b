"""A small masked autoencoder (He et al. 2022) around a timm ViT encoder, for the demo's MIM teacher.

Follows MAE's recipe (models_mae.py): random masking of 75% of the patches, the encoder on the
visible ones, a light decoder with mask tokens and fixed 2-D sin-cos positions, per-patch
normalised pixel targets, loss on masked patches only. Only the encoder is kept as the teacher.
"""

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from ..masking import random_keep_indices
from ..models.tokens import embed_tokens, keep_with_prefix


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), row-major patches."""
    B, C, H, W = pixels.shape
    x = pixels.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 2,
        mask_ratio: float = 0.75,
    ):
        super().__init__()
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.patch = encoder.patch_embed.patch_size[0]
        grid = list(encoder.patch_embed.grid_size)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        pos = build_sincos2d_pos_embed(grid, decoder_dim)  # (L, D) fixed, as MAE
        self.register_buffer("decoder_pos", torch.cat([torch.zeros(1, decoder_dim), pos])[None], persistent=False)
        self.decoder = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, H, W) -> mean loss on masked patches (norm_pix_loss)."""
        enc = self.encoder
        x = embed_tokens(enc, pixels)  # (B, 1 + L, D)
        B, L = x.shape[0], x.shape[1] - 1
        visible = random_keep_indices(B, L, int(L * (1 - self.mask_ratio)), pixels.device)  # (B, V)
        x = enc.norm(enc.blocks(keep_with_prefix(x, visible, 1)))  # (B, 1 + V, D)
        pred = self.decode(x, visible, L)  # (B, L, p*p*3)
        target = patchify(pixels, self.patch)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        masked = torch.ones(B, L, device=pixels.device).scatter_(1, visible, 0.0)  # 1 where hidden
        return (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()

    def decode(self, x: torch.Tensor, visible: torch.Tensor, L: int) -> torch.Tensor:
        x = self.decoder_embed(x)  # (B, 1 + V, Dd)
        full = self.mask_token.expand(x.shape[0], L, -1).clone()
        full.scatter_(1, visible.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]
