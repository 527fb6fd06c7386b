"""A trained student out to the tools people fine-tune in.

- timm, `--out DIR` (no suffix): timm's own `save_for_hf` folder (config.json with the student's
      architecture, model arguments and mean/std, + model.safetensors, no head); loads with
      `timm.create_model('local-dir:DIR', pretrained=True)`.
- timm, `--out FILE.safetensors` or `FILE.pth`: the state dict (safetensors, or a torch file for .pth /
      .pt / .bin) + `FILE.json` beside it; loads with `timm.create_model(arch, pretrained=True,
      num_classes=0, pretrained_cfg_overlay=dict(file=FILE), **model_kwargs)` (mean/std from the json).
- mae: `{'model': state_dict}` in MAE / timm names with pos_embed holding the CLS entry, the layout
      of `mae_pretrain_vit_base.pth` that detectron2 ViTDet (`pretrain_use_cls_token=True`,
      init_checkpoint `...?matching_heuristics=True`) and mmdet's ViTDet project load.
- mmseg / mmpretrain: `{'state_dict': ...}` in OpenMMLab ViT names (formats.to_mm states the mapping
      and its sources); mmseg/mmpretrain backbones take it as init_cfg=dict(type='Pretrained', checkpoint=FILE),
      built with the settings the result lists (`consumers.mm_settings`: mmseg needs `patch_bias=True`).
`verify` reloads each file strictly, as its consumer would (timm itself; the OpenMMLab class where it
imports, else our reverse mapping), and compares features.
"""

import json
import re
from pathlib import Path

import timm
import torch
from torch import nn

from ..files import read_model, save_atomic, write_atomic
from ..models.load import create_vit, mean_std
from ..provenance import provenance
from .consumers import mm_backbone, mm_settings, mm_tokens
from .formats import load_into, to_mm
from .safe_load import load_weights

FORMATS = ("timm", "mae", "mmseg", "mmpretrain")
TOLERANCE = 1e-6  # max |a - b|: the same arithmetic reloaded (timm, our mapping)
# ||a - b|| / ||a||: OpenMMLab's attention (nn.MultiheadAttention in mmseg) sums in another order, so its
# absolute error grows with depth (3.3e-5 max at ViT-B/16, random weights); a wrong mapping is ~1e-2 or more
MM_TOLERANCE = 1e-5

# Keys of mae_pretrain_vit_base.pth; ViTDet's ViT has a place for each.
_MAE_KEY = re.compile(
    r"cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|"
    r"blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
)


def read_student(run: str | Path) -> tuple[nn.Module, str, dict]:
    """(model, arch, model_kwargs) of a run directory, one of its checkpoints, or a model file."""
    own = read_model(run)
    if own.fd_encoder:
        raise ValueError(
            f"{run}: FD's encoder (student.fd_encoder) has a relative position bias that timm's "
            "VisionTransformer and the MAE / OpenMMLab layouts lack; eval and analyze take the run"
        )
    own.model_kwargs.pop("drop_path_rate", None)  # training-only; the exported structure does not depend on it
    own.model_kwargs.pop("num_classes", None)
    return own.build().eval(), own.arch, own.model_kwargs


def _state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def timm_config_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def write_timm_folder(model: nn.Module, out: Path) -> list[Path]:
    """timm's `save_for_hf`: config.json (architecture, model_args, pretrained_cfg) + model.safetensors."""
    from timm.models import save_for_hf

    source = {"tag", "license", "hf_hub_id", "url", "file"}  # the arch's own weights' card, not ours
    model.pretrained_cfg = {
        **{k: v for k, v in model.pretrained_cfg.items() if k not in source},
        "tag": "hybrid_distill",
    }
    save_for_hf(model, str(out), safe_serialization=True)
    return [out / "config.json", out / "model.safetensors"]


def write_timm(model: nn.Module, arch: str, kwargs: dict, out: Path) -> list[Path]:
    if not out.suffix:
        return write_timm_folder(model, out)
    if out.suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise ValueError(f"--out {out}: use a folder (no suffix), FILE.safetensors or FILE.pth for --format timm")
    mean, std = mean_std(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        write_atomic(
            out, lambda tmp: save_file(_state(model), str(tmp), metadata={"format": "pt", "architecture": arch})
        )
    else:
        save_atomic(out, _state(model))  # timm's load_state_dict reads a plain torch file by its suffix
    overlay = {
        "file": out.name,
        "num_classes": 0,
        "mean": list(mean),
        "std": list(std),
        "input_size": [3, *model.patch_embed.img_size],
        "interpolation": "bicubic",
    }
    config = {
        "architecture": arch,
        "model_kwargs": kwargs,
        "pretrained_cfg_overlay": overlay,
        "usage": "timm.create_model(architecture, pretrained=True, num_classes=0, "
        "pretrained_cfg_overlay=dict(overlay, file=<this folder>/overlay['file']), **model_kwargs)",
        "provenance": provenance(),
    }
    timm_config_path(out).write_text(json.dumps(config, indent=2))
    return [out, timm_config_path(out)]


def load_timm_export(config_path: str | Path) -> nn.Module:
    """The documented timm call on an exported folder or `FILE.json`."""
    config_path = Path(config_path)
    if config_path.is_dir():
        return timm.create_model(f"local-dir:{config_path}", pretrained=True)
    config = json.loads(config_path.read_text())
    overlay = dict(
        config["pretrained_cfg_overlay"], file=str(config_path.parent / config["pretrained_cfg_overlay"]["file"])
    )
    return timm.create_model(
        config["architecture"], pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, **config["model_kwargs"]
    )


def write_mae(model: nn.Module, out: Path) -> list[Path]:
    state = _state(model)
    foreign = [k for k in state if not _MAE_KEY.fullmatch(k)]
    if foreign or getattr(model, "no_embed_class", False) or model.num_prefix_tokens != 1:
        raise ValueError(
            f"the student has parts the MAE / ViTDet layout has no place for: {foreign[:6]} "
            "(MAE layout = CLS token, pos_embed with a CLS entry, pre-LN blocks with qkv bias, "
            "final norm). Export --format timm instead."
        )
    save_atomic(out, {"model": state})
    return [out]


def write_mm(model: nn.Module, out: Path, layout: str) -> list[Path]:
    save_atomic(out, {"state_dict": to_mm(_state(model), layout)})
    return [out]


class _MMFeatures(nn.Module):
    """An OpenMMLab backbone seen through timm's `forward_features` and `patch_embed.img_size`."""

    def __init__(self, backbone, layout: str, patch_embed):
        super().__init__()
        self.backbone, self.layout, self.patch_embed = backbone, layout, patch_embed

    def forward_features(self, images):
        return mm_tokens(self.backbone, self.layout, images)


def reload(fmt: str, out: Path, arch: str, kwargs: dict, student: nn.Module) -> tuple[nn.Module, str]:
    """The exported file read back strictly, and by what: timm itself, the OpenMMLab class where it
    imports, else our own reverse mapping."""
    if fmt == "timm":
        return load_timm_export(out if not out.suffix else timm_config_path(out)), "timm"
    backbone = mm_backbone(fmt, mm_settings(student, fmt)) if fmt in ("mmseg", "mmpretrain") else None
    if backbone is not None:
        backbone.load_state_dict(torch.load(out, map_location="cpu", weights_only=True)["state_dict"], strict=True)
        return _MMFeatures(backbone, fmt, student.patch_embed), f"{fmt} VisionTransformer"
    model = create_vit(arch, **kwargs)
    load_into(model, load_weights(out), source=str(out))
    return model, "hybrid_distill reverse mapping"


def feature_difference(a: nn.Module, b: nn.Module, relative: bool = False, seed: int = 0) -> float:
    """Max |a - b| (or ||a - b|| / ||a||) of forward_features on a fixed random batch at a's input size."""
    size = a.patch_embed.img_size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fa, fb = a.eval().forward_features(x), b.eval().forward_features(x)
    return ((fa - fb).norm() / fa.norm()).item() if relative else (fa - fb).abs().max().item()


def export(run: str | Path, fmt: str, out: str | Path, verify: bool = False) -> dict:
    """Write the student of `run` in `fmt`; with `verify`, reload it and compare features."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {FORMATS}")
    model, arch, kwargs = read_student(run)
    out = Path(out)
    if fmt != "timm" and out.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"--out {out}: --format {fmt} writes a torch file; name it FILE.pth")
    writers = {
        "timm": lambda: write_timm(model, arch, kwargs, out),
        "mae": lambda: write_mae(model, out),
        "mmseg": lambda: write_mm(model, out, "mmseg"),
        "mmpretrain": lambda: write_mm(model, out, "mmpretrain"),
    }
    result = {"format": fmt, "arch": arch, "files": [str(p) for p in writers[fmt]()]}
    if fmt in ("mmseg", "mmpretrain"):
        result["settings"] = mm_settings(model, fmt)  # VisionTransformer(**settings) loads it strictly
    if verify:
        reloaded, result["verified_with"] = reload(fmt, out, arch, kwargs, model)
        result["max_feature_diff"] = feature_difference(model, reloaded)
        what, tolerance = "max_feature_diff", TOLERANCE
        if isinstance(reloaded, _MMFeatures):
            result["relative_feature_diff"] = feature_difference(model, reloaded, relative=True)
            what, tolerance = "relative_feature_diff", MM_TOLERANCE
        if result[what] >= tolerance:
            raise RuntimeError(
                f"{out} reloads with features off ({what} {result[what]:.3g} >= {tolerance}); the export is wrong"
            )
    return result
