"""Make and load timm ViTs: by timm name, from our model files, from our run checkpoints.

Two file formats of ours, both plain dicts of tensors and builtins so that
`torch.load(weights_only=True)` reads them:
- model file  {'format': 'hybrid-distill-model', 'arch', 'model_kwargs', 'state_dict', 'mean', 'std'}
- checkpoint  {'format': 'hybrid-distill-checkpoint', 'student', 'heads', ..., 'config'}
Official teacher formats (MAE, DeiT, DINO, OpenAI CLIP, ...) live in `hybrid_distill.weights`.
"""
from pathlib import Path

import timm
import torch
from torch import nn

MODEL_FORMAT = "hybrid-distill-model"
CHECKPOINT_FORMAT = "hybrid-distill-checkpoint"


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


def save_model_file(model: nn.Module, arch: str, model_kwargs: dict, path: str | Path,
                    mean=None, std=None) -> Path:
    """Write a model in our own format, atomically."""
    default_mean, default_std = mean_std(model)
    payload = {"format": MODEL_FORMAT, "arch": arch, "model_kwargs": dict(model_kwargs),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "mean": list(mean or default_mean), "std": list(std or default_std)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _set_mean_std(model: nn.Module, mean, std) -> nn.Module:
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}, mean=tuple(mean), std=tuple(std))
    return model


def model_from_file(payload: dict) -> nn.Module:
    model = create_vit(payload["arch"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return _set_mean_std(model, payload["mean"], payload["std"])


def student_from_checkpoint(payload: dict) -> nn.Module:
    """The student of one of our run checkpoints, as a plain timm model."""
    from .fd_encoder import create_student_vit
    cfg = payload["config"]["student"]
    model = create_student_vit(cfg["arch"], dict(cfg.get("model_kwargs") or {}), cfg.get("fd_encoder", False))
    model.load_state_dict(payload["student"], strict=True)
    return _set_mean_std(model, cfg["mean"], cfg["std"]) if cfg.get("mean") else model


def newest_checkpoint(run_dir: Path) -> Path:
    """The newest complete (checksum-verified) checkpoint of a run directory."""
    from ..checkpoint import newest_complete  # checkpoint imports this module's format names
    found = newest_complete(Path(run_dir))
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoints/checkpoint-*.pt; pass a checkpoint file")
    return found


def student_with_decoder(spec: str) -> nn.Module:
    """The student of a run directory or checkpoint with its trained decoder as `model.decoder`."""
    from .decoder import decoder_from_checkpoint
    path = Path(spec)
    path = newest_checkpoint(path) if path.is_dir() else path
    payload = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{spec}: decoders are analysed from run directories or their checkpoints only")
    model = student_from_checkpoint(payload)
    block = model.blocks[0]
    model.decoder = decoder_from_checkpoint(payload, model.embed_dim, block.attn.num_heads,
                                            tuple(model.patch_embed.grid_size),
                                            block.mlp.fc1.out_features / model.embed_dim)
    return model


def load_model(spec: str, pretrained: bool = False, **model_kwargs) -> nn.Module:
    """A backbone from a timm name, one of our model files or checkpoints, or a run directory."""
    path = Path(spec)
    if path.is_dir():
        path = newest_checkpoint(path)
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        kind = payload.get("format") if isinstance(payload, dict) else None
        if kind == MODEL_FORMAT:
            return model_from_file(payload)
        if kind == CHECKPOINT_FORMAT:
            return student_from_checkpoint(payload)
        raise ValueError(f"{path} is not a hybrid-distill model file or checkpoint "
                         "(for official teacher files use hybrid_distill.weights)")
    if path.suffix in {".pt", ".pth", ".safetensors", ".bin"} or "/" in spec:
        raise FileNotFoundError(f"no such model file or run directory: {spec}")
    return create_vit(spec, pretrained=pretrained, **model_kwargs)
