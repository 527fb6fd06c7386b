"""Mask feature reconstruction (paper 2.4, B.2): the student predicts the feature teacher's tokens at
masked patches. Two styles, as the paper compares them:
- simmim: a learnable mask token replaces the masked patches in the encoder's input, a Linear head
  predicts, the loss reads masked patches only (SimMIM models/simmim.py, with T_c features as targets);
- dbot: the encoder sees the visible patches only, mask tokens enter the asymmetric decoder
  (dBOT models_mae.py: `random_masking`, `forward_decoder`; its loss also reads the CLS token).
Masks are drawn in cells of `scale` x `scale` patches (SimMIM's MaskGenerator: 32 px cells on a /16 ViT).
"""

import math

import torch
from torch import nn

from ..config_schema import MaskStyle

SIMMIM_RATIO, SIMMIM_PATCH = 0.6, 32  # SimMIM configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
DBOT_RATIO = 0.75  # dBOT main_pretrain.py --mask_ratio; dBOT masks single patches (`random_masking`)


def cell_mask(batch: int, grid: tuple[int, int], scale: int, ratio: float, device=None) -> torch.Tensor:
    """(B, L) bool, True = masked: ceil(ratio * cells) random cells of scale x scale patches per image."""
    gh, gw = grid[0] // scale, grid[1] // scale
    cells = gh * gw
    count = math.ceil(cells * ratio - 1e-6)  # SimMIM: int(np.ceil(token_count * mask_ratio))
    order = torch.rand(batch, cells, device=device).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool, device=device).scatter(1, order[:, :count], True)
    mask = mask.view(batch, gh, gw).repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return mask.flatten(1)  # (B, L), row-major like the patch tokens


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask with the same count per row -> (B, K) sorted indices of the visible patches."""
    return (~mask).nonzero()[:, 1].view(mask.shape[0], -1)


class MaskRecon(nn.Module):
    """Draws the mask and, for simmim, owns the mask token of the encoder's input (not exported)."""

    def __init__(
        self,
        style: MaskStyle,
        ratio: float | None,
        patch_px: int | None,
        model_patch: int,
        grid: tuple[int, int],
        width: int,
    ):
        super().__init__()
        self.style = MaskStyle(style)
        simmim = self.style is MaskStyle.simmim
        self.ratio = ratio if ratio is not None else (SIMMIM_RATIO if simmim else DBOT_RATIO)
        patch_px = patch_px if patch_px is not None else (SIMMIM_PATCH if simmim else model_patch)
        if patch_px % model_patch or grid[0] % (patch_px // model_patch) or grid[1] % (patch_px // model_patch):
            raise ValueError(
                f"student.mask_recon.patch={patch_px} px must be a multiple of the student's "
                f"{model_patch} px patch that tiles its {grid[0]}x{grid[1]} grid"
            )
        self.scale, self.grid = patch_px // model_patch, tuple(grid)
        # SimMIM: zeros then trunc_normal_(std=.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02) if simmim else None

    def draw(self, batch: int, device) -> torch.Tensor:
        return cell_mask(batch, self.grid, self.scale, self.ratio, device)

    def embed(self, model: nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SimMIM's encoder input: normalised pixels -> (B, P + L, D), the mask token in place of every
        masked patch embedding, before positions are added (SimMIM VisionTransformerForSimMIM.forward)."""
        x = model.patch_embed(pixels)  # (B, L, D)
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        return model.norm_pre(model.patch_drop(model._pos_embed(x)))
