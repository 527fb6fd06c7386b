"""Teacher backbones from timm names, official files or our own runs, with a manifest record.

`build_teacher_backbone(arch, file=None, pretrained=False, model_kwargs=None)` returns a plain timm
VisionTransformer (num_classes=0 unless asked) and a record
`{'file', 'sha256', 'source', 'license', 'arch', 'format'}` for the run manifest.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import timm
from torch import nn

from ..files import CHECKPOINT_FORMAT, MODEL_FORMAT, newest_checkpoint, own_model, sha256_file
from ..models.load import create_vit, mean_std, set_mean_std
from .formats import load_into
from .offline import hub_reachable, unavailable
from .safe_load import is_torchscript_archive, load_weights

OWN_RUN_LICENSE = "derived from a hybrid-distill run: the licences of that run's teachers apply (see its manifest)"
UNKNOWN_LICENSE = "unknown: check the terms of the weights' source"


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    arch: str  # timm name with pretrained tag; its pretrained_cfg holds mean / std
    role: str  # mim | contrastive | supervised | self-distillation
    width: int
    depth: int
    heads: int
    patch: int
    img_size: int
    license: str  # of the released weights, with where it is stated
    official_file: str  # the weights file as its authors release it (`weights: FILE` reads it)
    note: str  # where that file name is stated, or 'unverified'


# Licences: facebookresearch/mae LICENSE (CC BY-NC 4.0), facebookresearch/deit and dino LICENSE
# (Apache 2.0), openai/CLIP LICENSE (MIT), mlfoundations/open_clip LICENSE (MIT); the newer rows as timm's
# pretrained_cfg states them (dinov3-license, mit, apache-2.0, nvidia-open-model-license) and as checked at
# the source: dinov2/hub/backbones.py's header (Apache 2.0), dinov3/hub/backbones.py's header (DINOv3 License
# Agreement), baaivision/EVA LICENSE (MIT), perception_models README (Model License Apache 2.0), big_vision
# README_siglip2.md (software Apache 2.0, other materials CC-BY 4.0), NVlabs/RADIO README (C-RADIO: NVIDIA Open
# Model License). Official files, each row's note naming where its name is stated:
# - timm url: the arch's pretrained_cfg `url`, whose basename the file is (tests/test_weights.py checks it);
# - DINOv2: facebookresearch/dinov2 dinov2/hub/backbones.py, {model_name}/{model_name}_pretrain.pth with
#   model_name dinov2_vitb14 or dinov2_vitb14_reg4 (hub/utils.py _make_dinov2_model_name);
# - DINOv3: facebookresearch/dinov3 dinov3/hub/backbones.py, _make_dinov3_vit_model_url with the hashes
#   dinov3_vitb16 / dinov3_vitl16 pass (73cec8be, 8aa4cbdd); the download URL comes by request form;
# - EVA-02: baaivision/EVA EVA-02/asuka/README.md, "MIM pre-trained EVA-02", HF Yuxin-CV/EVA-02 eva02/pt/;
# - PE core: facebookresearch/perception_models core/vision_encoder/config.py fetch_pe_checkpoint,
#   hf://facebook/{name}:{name}.pt;
# - SigLIP 2: google-research/big_vision configs/proj/image_text/SigLIP2_demo.ipynb,
#   gs://big_vision/siglip2/siglip2_{variant}_{res}.npz (B/16 at 224: siglip2_b16_224.npz);
# - C-RADIOv3: NVlabs/RADIO README names the HF repo nvidia/C-RADIOv3-B, whose HF model (radio/hf_model.py,
#   pushed by hf_hub.py) holds the radio_model.* names read here; NVlabs/RADIO issue #116 links the earlier HF
#   repo's nvidia/C-RADIO/blob/main/model.safetensors, so the name is that convention, not seen for v3-B
#   itself. radio/common.py's torch.hub file c-radio_v3-b_half.pth.tar holds base_model.* names in a pickle
#   with training args, which is not read.
# name | timm arch | kind | width depth heads patch img_size | licence | official file | note
_TABLE = """
mae_vit_base_patch16 | vit_base_patch16_224.mae | mim | 768 12 12 16 224 | CC-BY-NC-4.0 (facebookresearch/mae): non-commercial | mae_pretrain_vit_base.pth | timm url
mae_vit_large_patch16 | vit_large_patch16_224.mae | mim | 1024 24 16 16 224 | CC-BY-NC-4.0 (facebookresearch/mae): non-commercial | mae_pretrain_vit_large.pth | timm url
deit_base_patch16 | deit_base_patch16_224.fb_in1k | supervised | 768 12 12 16 224 | Apache-2.0 (facebookresearch/deit) | deit_base_patch16_224-b5f2ef4d.pth | timm url
deit_small_patch16 | deit_small_patch16_224.fb_in1k | supervised | 384 12 6 16 224 | Apache-2.0 (facebookresearch/deit) | deit_small_patch16_224-cd65a155.pth | timm url
dino_vit_base_patch16 | vit_base_patch16_224.dino | self-distillation | 768 12 12 16 224 | Apache-2.0 (facebookresearch/dino) | dino_vitbase16_pretrain.pth | timm url
dino_vit_small_patch16 | vit_small_patch16_224.dino | self-distillation | 384 12 6 16 224 | Apache-2.0 (facebookresearch/dino) | dino_deitsmall16_pretrain.pth | timm url
clip_vit_base_patch16 | vit_base_patch16_clip_quickgelu_224.openai | contrastive | 768 12 12 16 224 | MIT (openai/CLIP) | ViT-B-16.pt | openai/CLIP clip/clip.py _MODELS
clip_vit_large_patch14 | vit_large_patch14_clip_quickgelu_224.openai | contrastive | 1024 24 16 14 224 | MIT (openai/CLIP) | ViT-L-14.pt | openai/CLIP clip/clip.py _MODELS
openclip_vit_base_patch16_laion2b | vit_base_patch16_clip_224.laion2b | contrastive | 768 12 12 16 224 | MIT (mlfoundations/open_clip) | open_clip_pytorch_model.bin | open_clip constants.py HF_WEIGHTS_NAME (its hub repos' file)
dinov2_vit_base_patch14 | vit_base_patch14_dinov2.lvd142m | self-distillation | 768 12 12 14 518 | Apache-2.0 (facebookresearch/dinov2) | dinov2_vitb14_pretrain.pth | timm url; facebookresearch/dinov2 dinov2/hub/backbones.py
dinov2_vit_base_patch14_reg4 | vit_base_patch14_reg4_dinov2.lvd142m | self-distillation | 768 12 12 14 518 | Apache-2.0 (facebookresearch/dinov2) | dinov2_vitb14_reg4_pretrain.pth | timm url; facebookresearch/dinov2 dinov2/hub/backbones.py
dinov3_vit_base_patch16 | vit_base_patch16_dinov3.lvd1689m | self-distillation | 768 12 12 16 256 | DINOv3 License (facebookresearch/dinov3): read its terms | dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth | facebookresearch/dinov3 dinov3/hub/backbones.py (URL by request form)
dinov3_vit_large_patch16 | vit_large_patch16_dinov3.lvd1689m | self-distillation | 1024 24 16 16 256 | DINOv3 License (facebookresearch/dinov3): read its terms | dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth | facebookresearch/dinov3 dinov3/hub/backbones.py (URL by request form)
eva02_vit_base_patch14 | eva02_base_patch14_224.mim_in22k | mim | 768 12 12 14 224 | MIT (baaivision/EVA) | eva02_B_pt_in21k_p14.pt | baaivision/EVA EVA-02/asuka/README.md (HF Yuxin-CV/EVA-02 eva02/pt/)
pe_core_vit_base_patch16 | vit_pe_core_base_patch16_224.fb | contrastive | 768 12 12 16 224 | Apache-2.0 (facebookresearch/perception_models) | PE-Core-B16-224.pt | facebookresearch/perception_models core/vision_encoder/config.py (HF facebook/PE-Core-B16-224)
siglip2_vit_base_patch16 | vit_base_patch16_siglip_224.v2_webli | contrastive | 768 12 12 16 224 | Apache-2.0 (google-research/big_vision; its README_siglip2.md puts materials other than software under CC-BY-4.0) | siglip2_b16_224.npz | google-research/big_vision SigLIP2_demo.ipynb (gs://big_vision/siglip2/)
radio_v3_vit_base_patch16 | vit_base_patch16_radio_v3.c_radio | agglomerative | 768 12 12 16 512 | NVIDIA Open Model License (NVlabs/RADIO) | model.safetensors of HF nvidia/C-RADIOv3-B | unverified file name: NVlabs/RADIO README names the HF repo; torch.hub's c-radio_v3-b_half.pth.tar (radio/common.py) is not read
"""


def _spec(row: str) -> TeacherSpec:
    name, arch, kind, dims, licence, file, note = (field.strip() for field in row.split("|"))
    return TeacherSpec(name, arch, kind, *map(int, dims.split()), licence, file, note)


TEACHERS = {spec.name: spec for spec in map(_spec, _TABLE.strip().splitlines())}


def resolve_arch(name: str) -> str:
    """A registry name or a timm name -> the timm name (registry names map to their tagged arch)."""
    return TEACHERS[name].arch if name in TEACHERS else name


def license_of(arch: str) -> str:
    """Licence of the weights an arch name stands for; an untagged name means timm's default tag."""
    cfg = timm.models.get_pretrained_cfg(arch)
    tagged = arch if "." in arch or cfg is None else f"{arch}.{cfg.tag}"
    return next((t.license for t in TEACHERS.values() if t.arch == tagged), UNKNOWN_LICENSE)


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = timm.models.get_pretrained_cfg(arch)
    return (tuple(cfg.mean), tuple(cfg.std)) if cfg else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def teacher_table() -> list[dict]:
    """Rows for `hybrid-distill teachers list`."""
    rows = []
    for spec in TEACHERS.values():
        mean, std = normalisation(spec.arch)
        rows.append(dict(asdict(spec), mean=list(mean), std=list(std)))
    return rows


# ---------------------------------------------------------------- building


def _record(file, source: str, license: str, arch: str, fmt: str) -> dict:
    path = Path(file).resolve() if file else None
    return {
        "file": str(path) if path else None,
        "sha256": sha256_file(path) if path else None,
        "source": source,
        "license": license,
        "arch": arch,
        "format": fmt,
    }


def _from_own_run(path: Path, payload: dict, model_kwargs: dict, resample: bool = False) -> tuple[nn.Module, dict]:
    """A student of one of our runs (or a model file) as the next stage's teacher (dBOT-style)."""
    own = own_model(payload, path)
    own.model_kwargs.pop("drop_path_rate", None)  # a teacher runs in eval mode; keep its structure only
    model = create_vit(own.arch, **{**own.model_kwargs, **model_kwargs})
    load_into(model, {"model": own.state_dict}, source=str(path), resample=resample)
    if own.mean and own.std:
        set_mean_std(model, own.mean, own.std)
    return model, _record(path, f"hybrid-distill {own.format}", OWN_RUN_LICENSE, own.arch, own.format)


def _from_big_vision(arch: str, file: Path, model_kwargs: dict) -> tuple[nn.Module, dict]:
    """A big_vision .npz (SigLIP / SigLIP 2 `params/img/...`, ViT `Transformer/...`): timm's `load_pretrained`
    reads it with numpy (allow_pickle=False) and renames it (vision_transformer.py `_load_weights`)."""
    model = create_vit(arch, **model_kwargs)
    if not hasattr(model, "load_pretrained"):
        raise ValueError(f"{file} is a big_vision .npz; '{arch}' is not a timm VisionTransformer that reads one")
    try:
        model.load_pretrained(str(file))
    except (KeyError, RuntimeError, ValueError) as err:  # a missing array, another shape, a pickled object array
        raise ValueError(f"{file} (big_vision npz) does not fit '{arch}': {str(err).splitlines()[0]}") from None
    return model, _record(file, f"file {file.name}", license_of(arch), arch, "big_vision npz")


def _from_file(arch: str, file: Path, model_kwargs: dict, resample: bool = False) -> tuple[nn.Module, dict]:
    if file.suffix == ".npz" and arch:
        return _from_big_vision(arch, file, model_kwargs)
    payload = load_weights(file)
    if isinstance(payload, dict) and payload.get("format") in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        return _from_own_run(file, payload, model_kwargs, resample)
    if not arch:
        raise ValueError(
            f"{file} is an official checkpoint: name its timm arch too (see `hybrid-distill teachers list`)"
        )
    model = create_vit(arch, **model_kwargs)
    fmt = load_into(model, payload, source=str(file), resample=resample)
    if is_torchscript_archive(file) and type(model.blocks[0].mlp.act).__name__ != "QuickGELU":
        raise ValueError(
            f"{file} is an OpenAI CLIP archive, which uses QuickGELU; '{arch}' does not. Use "
            f"{arch.split('.')[0].replace('_clip_', '_clip_quickgelu_')}.openai"
        )
    return model, _record(file, f"file {file.name}", license_of(arch), arch, fmt)


def _hub_file(arch: str, cache_dir) -> Path | None:
    """The cached weight file timm read from the HF hub, when it can be found."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if not (cfg and cfg.hf_hub_id):
        return None
    from huggingface_hub import try_to_load_from_cache

    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(cfg.hf_hub_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    return None


def build_teacher_backbone(
    arch: str,
    file: str | Path | None = None,
    pretrained: bool = False,
    model_kwargs: dict | None = None,
    *,
    cache_dir: str | Path | None = None,
    resample: bool = False,
) -> tuple[nn.Module, dict]:
    """A frozen-to-be timm ViT and its manifest record {'file', 'sha256', 'source', 'license', ...}.

    arch: timm name (tag picks mean/std) or a `teachers list` name; may be empty when `file` is ours.
    file: an official checkpoint (MAE, DeiT, DINO, OpenAI CLIP, open_clip, HF, mmseg/mmpretrain, any
          of them as safetensors) or one of our run checkpoints / run directories / model files.
    pretrained: without a file, weights through timm / the HF hub (`cache_dir`: where they are cached).
    resample: let a file's patch kernel of another size be resampled to the model's (else refused).
    """
    name, arch, kwargs = arch, resolve_arch(arch or ""), dict(model_kwargs or {})
    if file is not None:
        path = Path(file)
        path = newest_checkpoint(path) if path.is_dir() else path
        model, record = _from_file(arch, path, kwargs, resample)
    elif pretrained:
        cached = _hub_file(arch, cache_dir)
        if cached is None and not hub_reachable():
            raise unavailable(name or arch, arch)
        overlay = dict(file=str(cached)) if cached else None  # read the cache directly: no network call
        model = create_vit(arch, pretrained=True, cache_dir=cache_dir, pretrained_cfg_overlay=overlay, **kwargs)
        cached = cached or _hub_file(arch, cache_dir)
        record = _record(cached, f"timm/HF hub {arch}", license_of(arch), arch, "timm")
    else:
        model = create_vit(arch, **kwargs)
        record = {"file": None, "sha256": None, "source": "random init", "license": None, "arch": arch, "format": None}
    mean, std = mean_std(model)
    pe = model.patch_embed
    geometry = {
        "img_size": list(pe.img_size),
        "patch_size": list(pe.patch_size),
        "grid": list(pe.grid_size),
        "prefix_tokens": int(getattr(model, "num_prefix_tokens", 1)),
    }
    return model.eval(), dict(record, mean=list(mean), std=list(std), **geometry)
