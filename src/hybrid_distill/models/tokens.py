"""The token embedding of a timm VisionTransformer, split out of `forward_features` so that
tokens can be gathered between embedding and blocks (timm vision_transformer.py, forward_features)."""
import torch
from torch import nn


def embed_tokens(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) -> (B, P + L, D): patches, prefix tokens, positions, norm_pre.

    norm_pre is per token, so gathering tokens after it equals gathering before it.
    """
    x = model._pos_embed(model.patch_embed(pixels))
    return model.norm_pre(model.patch_drop(x))


def grid_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def image_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.img_size)


class Normalize(nn.Module):
    """Pixels in [0, 1] -> (x - mean) / std with the model's own statistics (not saved in state_dict)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std
