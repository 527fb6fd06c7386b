"""Official checkpoint layouts -> timm VisionTransformer state dicts, and back for export.

Layouts (the sources are named at each mapping):
- timm names, wrapped or not: MAE `{'model': encoder}`, DeiT `{'model'}` with `head.*`,
  DINO raw or its training checkpoint `{'teacher': {'backbone.*', 'head.*'}}`.
- OpenAI CLIP / open_clip `visual.*` names: converted by timm's own `checkpoint_filter_fn`
  (`_convert_openai_clip`), which also handles open_clip's `visual.trunk.*` timm towers.
- Hugging Face `ViTMAEModel` / `ViTModel` and `CLIPVisionModel` / `CLIPModel` names.
- mmseg / mmpretrain ViT names (the inverse of `to_mm`).
- The Eva family's own releases, renamed by timm's `timm.models.eva.checkpoint_filter_fn`: DINOv3's
  repository (`storage_tokens`, `ls1.gamma`, one `qkv.bias` with a zero k part), EVA-02's (`{'module'}`,
  SwiGLU `mlp.w1 / w2 / w3`, `mlp.ffn_ln`), Perception Encoder's (`visual.conv1`, `transformer.resblocks`,
  `ls_1.gamma`, `attn_pool`).
- DINOv2's hub releases (facebookresearch/dinov2 `dinov2_vits14_pretrain.pth`, `*_reg4_pretrain.pth`):
  timm names with `ls1.gamma`, a `mask_token` (1, D), `pos_embed` with a CLS entry and `register_tokens`,
  renamed by timm's `_convert_dinov2` (registers to `reg_token`, the CLS position folded into `cls_token`).
- RADIO's timm form (`radio_model.model.*`: `patch_generator.embedder`, CLS + registers in one table,
  a CPE position grid), renamed by timm's `_convert_radio`; its adaptors and input conditioner dropped.
- big_vision `.npz` (SigLIP, `params/img/...`): read by timm's `load_pretrained` (numpy, no pickle), in
  `weights/teachers.py`.
Every path ends in the model family's timm `checkpoint_filter_fn` (pos-embed and patch-embed resampling
to the model's grid) and a strict `load_state_dict`.
"""

import re

import torch
from timm.models.eva import Eva
from timm.models.eva import checkpoint_filter_fn as eva_filter
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

# MAE pre-training checkpoints (facebookresearch/mae models_mae.py) carry the decoder and mask token.
_MAE_DECODER = ("decoder_", "mask_token")


def unwrap(payload: dict) -> tuple[dict, str]:
    """The state dict inside a checkpoint, and the wrapper it came in."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a dict of tensors, got {type(payload).__name__}")
    for key in ("model", "state_dict", "teacher", "module"):  # module: EVA-02's releases
        inner = payload.get(key)
        if isinstance(inner, dict) and any(torch.is_tensor(v) for v in inner.values()):
            return inner, key
    return payload, ""


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_format(sd: dict) -> str:
    """One of: dinov3, dinov2, pe, eva02, radio, openai-clip, open-clip-timm, hf-clip, hf-vit, mmseg, mmpretrain,
    timm."""
    keys = set(sd)
    if "storage_tokens" in keys:
        return "dinov3"
    if is_dinov2(sd):
        return "dinov2"
    if {"visual.conv1.weight", "conv1.weight"} & keys and any(".ls_1.gamma" in k or "attn_pool." in k for k in keys):
        return "pe"
    if any(re.search(r"\.mlp\.(w12|w1|ffn_ln)\.", k) for k in keys):
        return "eva02"
    if any(k.startswith("radio_model.model.") for k in keys):
        return "radio"
    if {"visual.class_embedding", "module.visual.class_embedding"} & keys:
        return "openai-clip"
    if any(k.startswith(("visual.trunk.", "module.visual.trunk.")) for k in keys):
        return "open-clip-timm"
    if any(k.startswith("vision_model.embeddings.") for k in keys):
        return "hf-clip"
    if any(re.match(r"(vit\.)?embeddings\.patch_embeddings\.projection\.", k) for k in keys):
        return "hf-vit"
    if any(re.match(r"(backbone\.)?layers\.\d+\.attn\.attn\.in_proj_weight", k) for k in keys):
        return "mmseg"
    if any(re.match(r"(backbone\.)?layers\.\d+\.attn\.qkv\.", k) for k in keys):
        return "mmpretrain"
    if any(k.startswith(("module.", "backbone.")) for k in keys) and not any(k.startswith("blocks.") for k in keys):
        return "timm-prefixed"
    return "timm"


def is_dinov2(sd: dict) -> bool:
    """DINOv2's hub layout (dinov2/models/vision_transformer.py): registers, or its mask token (1, D); MAE's is
    the decoder's (1, 1, D_dec), beside `decoder_*` keys, and is dropped with them."""
    mask = sd.get("mask_token")
    return "register_tokens" in sd or (
        torch.is_tensor(mask) and mask.dim() == 2 and not any(k.startswith("decoder_") for k in sd)
    )


def _drop_prefix_all(sd: dict) -> dict:
    """DDP `module.` and DINO `backbone.` wrappers; DINO's projection head is not part of the ViT."""
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) or k.startswith("head.") for k in sd):
            sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


# ---------------------------------------------------------------- Hugging Face transformers


def _hf_vit_key(k: str) -> str | None:
    """transformers modeling_vit.py / modeling_vit_mae.py names -> timm names (None: not encoder)."""
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    if k in fixed:
        return fixed[k]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", k)
    if not m:
        return None  # embeddings.mask_token, pooler.*, classifier.*, decoder.*
    i, part, kind = m.groups()
    sub = {
        "attention.output.dense": "attn.proj",
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }.get(part)
    return f"blocks.{i}.{sub}.{kind}" if sub else None


def _hf_clip_key(k: str) -> str | None:
    """transformers modeling_clip.py vision names -> timm CLIP-tower names."""
    fixed = {
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "pre_layrnorm.weight": "norm_pre.weight",
        "pre_layrnorm.bias": "norm_pre.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    }
    if k in fixed:
        return fixed[k]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
    if not m:
        return None  # class_embedding and position_embedding are reshaped below; position_ids dropped
    i, part, kind = m.groups()
    sub = {
        "self_attn.out_proj": "attn.proj",
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }.get(part)
    return f"blocks.{i}.{sub}.{kind}" if sub else None


def _fuse_qkv(sd: dict, pattern: str, names: tuple[str, str, str]) -> dict:
    """Separate q, k, v projections -> timm's fused qkv, stacked [q; k; v] (timm Attention.forward)."""
    out = {}
    for k in sd:
        m = re.fullmatch(pattern.format(part=names[0]), k)
        if m:
            i, kind = m.groups()
            parts = [sd[re.sub(rf"\.{names[0]}\.", f".{n}.", k)] for n in names]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, 0)  # (3D, D) or (3D,)
    return out


def from_hf_vit(sd: dict) -> dict:
    sd = _strip(sd, "vit.") if any(k.startswith("vit.") for k in sd) else sd
    out = {_hf_vit_key(k): v for k, v in sd.items() if _hf_vit_key(k)}
    out.update(
        _fuse_qkv(sd, r"encoder\.layer\.(\d+)\.attention\.attention\.{part}\.(weight|bias)", ("query", "key", "value"))
    )
    return out


def from_hf_clip(sd: dict) -> dict:
    vision = _strip(sd, "vision_model.")
    out = {_hf_clip_key(k): v for k, v in vision.items() if _hf_clip_key(k)}
    out.update(
        _fuse_qkv(vision, r"encoder\.layers\.(\d+)\.self_attn\.{part}\.(weight|bias)", ("q_proj", "k_proj", "v_proj"))
    )
    out["cls_token"] = vision["embeddings.class_embedding"].reshape(1, 1, -1)  # (D,) -> (1, 1, D)
    out["pos_embed"] = vision["embeddings.position_embedding.weight"].unsqueeze(0)  # (N, D) -> (1, N, D)
    if "visual_projection.weight" in sd:  # CLIPModel / CLIPVisionModelWithProjection: (P, D), no bias
        out["head.weight"] = sd["visual_projection.weight"]
        out["head.bias"] = torch.zeros(sd["visual_projection.weight"].shape[0])
    return out


# ---------------------------------------------------------------- mmseg / mmpretrain

# timm -> OpenMMLab ViT names. mmseg: tools/model_converters/vit2mmseg.py (attention is mmcv's
# MultiheadAttention wrapping nn.MultiheadAttention: attn.attn.in_proj_*, attn.attn.out_proj).
# mmpretrain: models/backbones/vision_transformer.py as used by tools/model_converters/
# openai-clip_to_mmpretrain-clip.py (attn.qkv, attn.proj, pre_norm). Both: layers.i.ln1/ln2,
# ffn.layers.0.0 (fc1), ffn.layers.1 (fc2), patch_embed.projection, final norm ln1.
_MM_BLOCK = {
    "mmseg": {
        "norm1": "ln1",
        "norm2": "ln2",
        "attn.qkv.weight": "attn.attn.in_proj_weight",
        "attn.qkv.bias": "attn.attn.in_proj_bias",
        "attn.proj": "attn.attn.out_proj",
        "mlp.fc1": "ffn.layers.0.0",
        "mlp.fc2": "ffn.layers.1",
    },
    "mmpretrain": {
        "norm1": "ln1",
        "norm2": "ln2",
        "attn.qkv": "attn.qkv",
        "attn.proj": "attn.proj",
        "mlp.fc1": "ffn.layers.0.0",
        "mlp.fc2": "ffn.layers.1",
    },
}
_MM_TOP = {
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "patch_embed.proj": "patch_embed.projection",
    "norm": "ln1",
    "norm_pre": "pre_norm",
}


def _rename(key: str, table: dict) -> str | None:
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def to_mm(sd: dict, layout: str) -> dict:
    """A timm ViT state dict (no head) in mmseg or mmpretrain backbone names."""
    if layout == "mmseg" and "norm_pre.weight" in sd:
        raise ValueError(
            "mmseg's VisionTransformer has no pre-norm (CLIP-style ln_pre); export "
            "--format mmpretrain, whose ViT has pre_norm, or use a student without norm_pre"
        )
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        new = (
            f"layers.{m[1]}.{_rename(m[2], _MM_BLOCK[layout])}"
            if m and _rename(m[2], _MM_BLOCK[layout])
            else None
            if m
            else _rename(k, _MM_TOP)
        )
        if new is None:
            raise ValueError(
                f"no {layout} name for timm key '{k}' (layer scale, register tokens and "
                "heads have no place in the OpenMMLab ViT)"
            )
        out[new] = v
    return out


def from_mm(sd: dict, layout: str) -> dict:
    sd = _strip(sd, "backbone.") if any(k.startswith("backbone.") for k in sd) else sd
    inverse_block = {v: k for k, v in _MM_BLOCK[layout].items()}
    inverse_top = {v: k for k, v in _MM_TOP.items()}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", k)
        sub = _rename(m[2], inverse_block) if m else None
        new = (f"blocks.{m[1]}.{sub}" if sub else None) if m else _rename(k, inverse_top)
        out[new or k] = v  # unknown keys stay as they are and fail the strict load by name
    return out


# ---------------------------------------------------------------- to a timm model


def to_timm_names(payload: dict) -> tuple[dict, str]:
    """Any supported layout -> (state dict in timm or OpenAI-CLIP names, format name).

    OpenAI CLIP, DINOv2, DINOv3, EVA-02, PE and RADIO names are left for timm's `checkpoint_filter_fn` to
    convert (DINOv2's by its `mask_token`, which the MAE clean-up below would drop)."""
    sd, wrapper = unwrap(payload)
    fmt = detect_format(sd)
    if fmt == "hf-vit":
        sd = from_hf_vit(sd)
    elif fmt == "hf-clip":
        sd = from_hf_clip(sd)
    elif fmt in ("mmseg", "mmpretrain"):
        sd = from_mm(sd, fmt)
    elif fmt in ("timm", "timm-prefixed"):
        sd = _drop_prefix_all(sd)
        if is_dinov2(sd):  # DDP's `module.` or a DINOv2 training checkpoint's `backbone.` around the hub layout
            fmt = "dinov2"
        elif any(k.startswith(_MAE_DECODER) for k in sd):
            sd = {k: v for k, v in sd.items() if not k.startswith(_MAE_DECODER)}
    return sd, f"{fmt} ({wrapper!r} wrapper)" if wrapper else fmt


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """Prefixes of classifier weights a headless model (num_classes=0) has no place for."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names if not list(model.get_submodule(n).parameters()))


PATCH_KEYS = ("patch_embed.proj.weight", "visual.conv1.weight", "conv1.weight")  # timm, OpenAI CLIP and PE


def check_patch(sd: dict, model: nn.Module, source: str, resample: bool) -> None:
    """timm's filter silently resamples a patch kernel of another size (FlexiViT): only when asked."""
    file_kernel = next((tuple(sd[k].shape[-2:]) for k in PATCH_KEYS if k in sd), None)
    model_kernel = tuple(model.patch_embed.patch_size)
    if file_kernel is not None and file_kernel != model_kernel and not resample:
        raise ValueError(
            f"{source} has {file_kernel[0]}x{file_kernel[1]} patches but the model is built with "
            f"{model_kernel[0]}x{model_kernel[1]} (model_kwargs.patch_size); build it with "
            f"patch_size {file_kernel[0]}, or set the teacher's resample: true to resample the kernel"
        )


def check_float(sd: dict, model: nn.Module, source: str) -> None:
    """Quantised weights (int8, uint8, int4, qint8, ...) would be copied into the float model as their raw
    integers by load_state_dict, silently. Only entries the model holds as floats are checked: a file's
    integer metadata (OpenAI CLIP's `input_resolution`, index buffers) is not weights."""
    own = model.state_dict()
    for key, value in sd.items():
        target = own.get(key)
        if (
            torch.is_tensor(value)
            and not value.is_floating_point()
            and target is not None
            and target.is_floating_point()
        ):
            raise ValueError(
                f"{source}: tensor '{key}' is {str(value.dtype).removeprefix('torch.')}, not floating point "
                "(quantised weights); pass the float weights (fp32, fp16 or bf16), or dequantise them first"
            )


def load_into(model: nn.Module, payload: dict, source: str = "checkpoint", resample: bool = False) -> str:
    """Convert `payload` and load it strictly into the timm `model`; returns the detected format. A patch
    kernel of another size is refused unless `resample`; position embeddings of another grid are
    interpolated (the teacher's match_grid), and the start-up summary shows the grid built."""
    sd, fmt = to_timm_names(payload)
    check_float(sd, model, source)  # before timm's filter, which would resample integer kernels and positions
    check_patch(sd, model, source, resample)
    family_filter = eva_filter if isinstance(model, Eva) else checkpoint_filter_fn
    sd = family_filter(sd, model)  # timm: official names, pos-embed / patch resampling
    check_float(sd, model, source)  # names that only timm's filter maps onto the model (OpenAI CLIP, DINOv3)
    drop = _classifier_keys(model)
    sd = {k: v for k, v in sd.items() if not (drop and k.startswith(drop))}
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"{source} (format {fmt}) has tensors of other shapes than the model: "
            f"{str(err).splitlines()[1:4]}. Pick the arch and model_kwargs (width, depth, "
            "patch size) that match the file."
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} (format {fmt}) does not fit {type(model).__name__} "
            f"'{getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}': "
            f"missing {result.missing_keys[:6]}{'...' if len(result.missing_keys) > 6 else ''}, "
            f"unexpected {result.unexpected_keys[:6]}{'...' if len(result.unexpected_keys) > 6 else ''}. "
            "Pick the arch that matches the file (e.g. vit_base_patch16_clip_quickgelu_224.openai for "
            "OpenAI CLIP, vit_base_patch16_224.mae for MAE) and model_kwargs for its width/depth."
        )
    return fmt
