"""Token layout of a timm VisionTransformer or Eva: embedding, prefix tokens, rotary embeddings, grid.

A sequence is P prefix tokens (CLS first, then registers) and L patches. Models run on all prefix
tokens and the kept patches (`keep_with_prefix`); targets and predictions are read at CLS + kept
patches, registers dropped (`cls_and_patches`). A teacher without a CLS token is read at its kept
patches only (`patches_only`); a student must have one (`check_class_token`): its CLS row would
otherwise silently be patch 0.
"""

import torch
from torch import nn

from ..config_schema import ConfigError
from ..masking import gather_tokens


def embed_tokens(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) -> (B, P + L, D): patches, prefix tokens, positions, norm_pre
    (timm vision_transformer.py, forward_features). norm_pre is per token, so gathering tokens after
    it equals gathering before it. For models without rotary embeddings (the students); see `embed_with_rope`.
    """
    return embed_with_rope(model, pixels)[0]


def embed_with_rope(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`embed_tokens` and the model's rotary embedding of its L patches: timm's Eva `_pos_embed` returns
    both (timm/models/eva.py, forward_features), the embedding (L, 2 hd), or (depth, H, L, 2 hd) with one
    per block (rope_type='mixed'); None for a VisionTransformer."""
    x = model._pos_embed(model.patch_embed(pixels))
    if not isinstance(x, tuple):
        return model.norm_pre(model.patch_drop(x)), None
    x, rope = x  # Eva drops patches (in training only) inside _pos_embed
    return model.norm_pre(x), rope


def rope_at(rope: torch.Tensor | None, index: torch.Tensor, block: int) -> torch.Tensor | None:
    """The rotary embedding (`embed_with_rope`) of the patches at index (B, n), for one block, in the layout
    timm's Eva attention takes: (B, 1, n, 2 hd), or (B, H, n, 2 hd) per head (as timm's
    apply_keep_indices_nlc gathers it for patch dropout). None without rotary embeddings."""
    if rope is None:
        return None
    if rope.dim() == 4:  # (depth, H, L, 2 hd): one embedding per block
        rope = rope[block]
    rope = rope if rope.dim() == 3 else rope.unsqueeze(0)  # (H or 1, L, 2 hd)
    return rope[:, index].transpose(0, 1)  # (B, H or 1, n, 2 hd)


def keep_with_prefix(tokens: torch.Tensor, index: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, P + L, D) -> (B, P + K, D): every prefix token (CLS, registers), patches gathered at (B, K)."""
    return torch.cat([tokens[:, :num_prefix], gather_tokens(tokens[:, num_prefix:], index)], dim=1)


def cls_and_patches(x: torch.Tensor, num_prefix: int, dim: int = 1) -> torch.Tensor:
    """Axis `dim` from P prefix tokens + patches to CLS + patches (registers dropped)."""
    if num_prefix == 1:
        return x
    patches = x.narrow(dim, num_prefix, x.shape[dim] - num_prefix)
    return torch.cat([x.narrow(dim, 0, 1), patches], dim=dim)


def patches_only(x: torch.Tensor, num_prefix: int, dim: int = 1) -> torch.Tensor:
    """Axis `dim` from P prefix tokens + patches to the patches (models without a class token)."""
    return x.narrow(dim, num_prefix, x.shape[dim] - num_prefix)


def has_class_token(model: nn.Module) -> bool:
    """timm's class_token=True (VisionTransformer and Eva alike keep cls_token None without one)."""
    return getattr(model, "cls_token", None) is not None


def check_class_token(model: nn.Module, who: str) -> None:
    if not has_class_token(model):
        raise ConfigError(
            f"{who} has no class token (timm class_token=False): hybrid-distill distils CLS + kept "
            "patch tokens; use a ViT with a class token"
        )


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
