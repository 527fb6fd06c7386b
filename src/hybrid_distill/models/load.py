"""Make timm ViTs by name and read the input normalisation they carry. Our own files: `files.py`."""

import timm
from torch import nn


def create_vit(arch: str, pretrained: bool = False, **model_kwargs) -> nn.Module:
    """A timm model with no classifier unless num_classes is given; fails clearly on unknown names."""
    if not timm.is_model(arch.split(".")[0]):
        close = timm.list_models(f"*{arch.split('.')[0].split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model '{arch}'; close names: {close}. See `timm.list_models()`.")
    model_kwargs.setdefault("num_classes", 0)
    return timm.create_model(arch, pretrained=pretrained, **model_kwargs)


def mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation a timm model was trained with (its pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def set_mean_std(model: nn.Module, mean, std) -> nn.Module:
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}, mean=tuple(mean), std=tuple(std))
    return model
