"""A controlled MIM teacher: a ViT whose heads attend locally or far by construction, not by training.

When MAE pre-training at this project's scale gives no head local attention (docs/replication), the
relation loss has nothing to transfer and claim (b) tests nothing. This teacher makes the pattern a
known input: 16 of the residual stream's dimensions hold fixed 2-D sin-cos positions (MAE's layout,
the four frequencies 10000^(-k/16), k = 1..4, per axis, sin and cos) that no layer writes to, and every
head's query and key read exactly those dimensions, so

    R_h(i, j) = q_i . k_j = beta_h * c_i c_j * sum_k [cos(w_k (x_i - x_j)) + cos(w_k (y_i - y_j))]    (eq. 2)

up to LayerNorm's per-token centring (it shifts the position dimensions by the token's mean over all
dimensions; the kernel stays the dominant term, correlation about 0.9), c_i the token's LayerNorm scale.
beta_h > 0 peaks at distance 0 (a local head, sharper as beta grows), beta_h < 0 at the farthest patches
(a long-range head), beta_h = 0 is uniform attention. Betas may differ per block. The
other dimensions carry the image (a random patch embedding, random values, projections and MLPs), so
the token features that pick the kept tokens (paper eq. 4) still depend on the image. It is a test
instrument, labelled as such wherever it is used, not a pre-trained model.
"""

import torch
from torch import nn

from ..models.decoder import sincos_2d

FREQS = (1, 2, 3, 4)  # frequency indices k of omega_k = 10000^(-k/16): periods 11 to 63 patches


def position_dims(dim: int) -> list[int]:
    """The residual dimensions holding positions: sin and cos of FREQS, for columns then rows."""
    quarter = dim // 4  # sincos_2d: [sin, cos] of the column in the first half, of the row in the second
    return [axis * 2 * quarter + part * quarter + k for axis in (0, 1) for part in (0, 1) for k in FREQS]


@torch.no_grad()
def make_controlled(encoder: nn.Module, betas: list, pos_scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Rewrite a timm ViT (random init) in place so head h of block i scores positions with betas[h] (the
    same in every block) or betas[i][h] (one list per block)."""
    D, heads, depth = encoder.embed_dim, encoder.blocks[0].attn.num_heads, len(encoder.blocks)
    hd = D // heads
    per_block = [list(b) for b in betas] if betas and isinstance(betas[0], (list, tuple)) else [list(betas)] * depth
    if (
        len(per_block) != depth
        or any(len(b) != heads for b in per_block)
        or D % 4
        or D // 4 <= max(FREQS)
        or hd < 4 * len(FREQS)
    ):
        raise ValueError(
            f"controlled teacher: need one beta per head ({heads}), in one list or one per block "
            f"({depth}), a width divisible by 4 above {4 * max(FREQS)} and a head width of at least "
            f"{4 * len(FREQS)}; got {betas} at width {D}, head width {hd}"
        )
    torch.manual_seed(seed)
    pos = position_dims(D)
    encoder.pos_embed.zero_()
    encoder.pos_embed[..., pos] = pos_scale * sincos_2d(D, tuple(encoder.patch_embed.grid_size))[..., pos]
    encoder.cls_token[..., pos] = 0.0
    for writer in [encoder.patch_embed.proj] + [m for b in encoder.blocks for m in (b.attn.proj, b.mlp.fc2)]:
        writer.weight[pos] = 0.0  # nothing writes to the position dimensions: they stay positions in every block
        if writer.bias is not None:
            writer.bias[pos] = 0.0
    for block, block_betas in zip(encoder.blocks, per_block):
        block.norm1.weight.fill_(1.0)
        block.norm1.bias.zero_()
        w, b = block.attn.qkv.weight, block.attn.qkv.bias  # (3D, D): q rows, k rows, v rows
        w[: 2 * D] = 0.0
        if b is not None:
            b[: 2 * D] = 0.0
        for h, beta in enumerate(block_betas):
            scale = abs(beta) ** 0.5
            for j, d in enumerate(pos):
                w[h * hd + j, d] = scale  # q_h = sqrt|beta| * positions
                w[D + h * hd + j, d] = scale if beta >= 0 else -scale  # k_h = sign(beta) sqrt|beta| * positions
    for name in ("norm", "fc_norm"):
        module = getattr(encoder, name, None)
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    return encoder
