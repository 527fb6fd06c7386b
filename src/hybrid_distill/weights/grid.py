"""Teachers on the student's token grid.

A teacher whose patch size or resolution differs from the student's sees the image resized so that
its token grid equals the student's (a /14 teacher at 196 px for a /16 student
at 224 px). The teacher is built at that `img_size`; timm's `checkpoint_filter_fn` then resamples its
absolute position embeddings to the new grid with `resample_abs_pos_embed` (bicubic, antialiased,
prefix tokens kept as they are).
"""

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn


def teacher_input_size(student_grid: tuple[int, int], teacher_patch: int | tuple[int, int]) -> tuple[int, int]:
    """Image size (H, W) at which a teacher with `teacher_patch` sees `student_grid` tokens."""
    ph, pw = (teacher_patch, teacher_patch) if isinstance(teacher_patch, int) else teacher_patch
    return student_grid[0] * ph, student_grid[1] * pw


def arch_geometry(arch: str, **model_kwargs) -> dict:
    """Patch size, default grid, width, depth and heads of a timm ViT, built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)
    return {
        "patch": tuple(model.patch_embed.patch_size),
        "grid": tuple(model.patch_embed.grid_size),
        "width": model.embed_dim,
        "depth": len(model.blocks),
        "heads": model.blocks[0].attn.num_heads,
    }


def grid_model_kwargs(arch: str, student_grid: tuple[int, int], model_kwargs: dict | None = None) -> dict:
    """`model_kwargs` plus the `img_size` that gives the teacher the student's grid (when it differs)."""
    kwargs = dict(model_kwargs or {})
    geometry = arch_geometry(arch, **kwargs)
    if geometry["grid"] != tuple(student_grid):
        kwargs["img_size"] = teacher_input_size(student_grid, geometry["patch"])
    return kwargs


def resample_pos_embed(model: nn.Module, pos_embed: torch.Tensor, old_grid: tuple[int, int]) -> torch.Tensor:
    """A pos-embed of `old_grid` (1, P + L_old, D) on `model`'s grid (1, P + L_new, D), as timm does on load."""
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    return resample_abs_pos_embed(
        pos_embed, new_size=list(model.patch_embed.grid_size), old_size=list(old_grid), num_prefix_tokens=prefix
    )


def resize_to_grid(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, *size), bicubic with antialiasing; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
