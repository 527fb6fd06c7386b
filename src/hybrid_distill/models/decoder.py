"""The student's asymmetric decoder (paper 2.2-2.3, figures 1, 3a, 9): timm Blocks after the encoder.

dBOT's decoder (dBOT models_mae.py, `forward_decoder`): the encoder's normed tokens -> Linear embed ->
mask tokens at the masked patches (mask reconstruction only) -> fixed 2-D sin-cos positions -> blocks ->
LayerNorm; a Linear per teacher then predicts its features. Here the blocks have the student's width and
heads. The decoder is trained and dropped: exports and evaluations take the encoder only.
"""

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch import nn

from .tokens import keep_with_prefix


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): sin then cos of positions * 10000^(-2i/dim), i < dim/2 (Transformer)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + L, dim) fixed positions, a zero row for CLS, as MAE util/pos_embed.py lays them out:
    the first half encodes the column, the second half the row, patches in row-major order."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb]).float().unsqueeze(0)


def xavier_init(module: nn.Module) -> None:
    """MAE / dBOT `_init_weights`: xavier-uniform Linear weights, zero biases, LayerNorm 1 and 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Decoder(nn.Module):
    """k timm Blocks after the encoder; with `mask_token`, dBOT's mask-reconstruction decoder."""

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        grid: tuple[int, int],
        mlp_ratio: float = 4.0,
        mask_token: bool = False,
    ):
        super().__init__()
        self.embed = nn.Linear(width, width)  # dBOT decoder_embed
        self.register_buffer("pos_embed", sincos_2d(width, grid), persistent=False)  # (1, 1 + L, W)
        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(width)  # eps 1e-6, as dBOT's norm_layer
        self.apply(xavier_init)
        # only with mask reconstruction: an unused parameter would have no gradient (and stall DDP)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02) if mask_token else None

    def enter(self, x: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normed encoder tokens x (B, 1 + K, D) at CLS + keep (B, K) -> the first block's input:
        (B, 1 + K, D) at the same tokens, or with mask (B, L) (True: masked, keep: the visible patches)
        (B, 1 + L, D) with the mask token at every masked patch."""
        x = self.embed(x)
        B, _, D = x.shape
        pos = self.pos_embed.to(x.dtype).expand(B, -1, -1)  # (B, 1 + L, D)
        if mask is None:
            return x + keep_with_prefix(pos, keep, 1)
        rows = torch.cat([keep.new_zeros(B, 1), keep + 1], dim=1)  # CLS and visible rows of the full sequence
        full = self.mask_token.to(x.dtype).expand(B, pos.shape[1], D)
        return full.scatter(1, rows[..., None].expand(-1, -1, D), x) + pos

    def forward(self, x: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(self.blocks(self.enter(x, keep, mask)))


def decoder_from_checkpoint(
    payload: dict, width: int, num_heads: int, grid: tuple[int, int], mlp_ratio: float
) -> Decoder:
    """The trained decoder of one of our run checkpoints (its `decoder.*` entries), for analysis (paper figure 3a)."""
    cfg = payload["config"]["student"]
    if cfg.get("decoder") != "blocks":
        raise ValueError(f"this run's student has no decoder blocks (student.decoder={cfg.get('decoder', 'linear')})")
    state = {k[len("decoder.") :]: v for k, v in payload["model"].items() if k.startswith("decoder.")}
    decoder = Decoder(width, cfg["decoder_depth"], num_heads, grid, mlp_ratio, mask_token="mask_token" in state)
    decoder.load_state_dict(state, strict=True)
    return decoder
