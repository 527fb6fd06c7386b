"""Official teacher formats in, students out.

Each test writes a checkpoint with the real key names of its format (small widths here; full
ViT-B/16 shapes in test_weights_slow.py), loads it through `build_teacher_backbone`, and compares
features with a timm model holding the same weights, or with an independent forward of the
original architecture (OpenAI CLIP).
"""

import argparse
import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from hybrid_distill.cli import main
from hybrid_distill.files import save_checkpoint, save_model_file
from hybrid_distill.weights import (
    UnsafeCheckpointError,
    build_teacher_backbone,
    export,
    load_timm_export,
    load_weights,
    read_torchscript_state_dict,
    teacher_input_size,
)
from hybrid_distill.weights.command import export_main, teachers_main
from hybrid_distill.weights.formats import to_mm
from hybrid_distill.weights.grid import arch_geometry, grid_model_kwargs
from hybrid_distill.weights.teachers import OWN_RUN_LICENSE, TEACHERS

SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=32)  # grid 2 x 2 at patch 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
TOL = 1e-5


def random_vit(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """A timm ViT whose every parameter (norms included) is random, so no mapping error hides."""
    torch.manual_seed(seed)
    kwargs.setdefault("num_classes", 0)
    model = timm.create_model(arch, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def images(size=32, seed=1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: nn.Module, b: nn.Module, size=32) -> float:
    x = images(size)
    with torch.no_grad():
        return (a.eval().forward_features(x) - b.eval().forward_features(x)).abs().max().item()


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- timm-named formats: MAE, DeiT, DINO


def test_mae_pretrain_file_loads_equal_with_hash_and_licence(tmp_path):
    ref = random_vit("vit_base_patch16_224.mae", **SMALL)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": state(ref)}, path)
    model, record = build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=SMALL)
    assert max_diff(model, ref) < TOL
    assert record["sha256"] == sha256(path) and record["file"] == str(path.resolve())
    assert record["license"].startswith("CC-BY-NC-4.0") and record["source"]
    assert set(record) >= {"file", "sha256", "source", "license"}


def test_mae_training_checkpoint_with_decoder_and_args_loads_encoder_only(tmp_path):
    ref = random_vit("vit_base_patch16_224.mae", **SMALL)
    # facebookresearch/mae main_pretrain.py saves {'model', 'optimizer', 'epoch', 'scaler', 'args'}
    full = dict(
        state(ref),
        mask_token=torch.zeros(1, 1, 64),
        **{
            "decoder_embed.weight": torch.zeros(32, 64),
            "decoder_pos_embed": torch.zeros(1, 5, 32),
            "decoder_blocks.0.norm1.weight": torch.ones(32),
            "decoder_norm.weight": torch.ones(32),
            "decoder_pred.weight": torch.zeros(768, 32),
        },
    )
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": full, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    model, _ = build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=SMALL)
    assert max_diff(model, ref) < TOL


def test_deit_with_classifier_head(tmp_path):
    ref = random_vit("deit_base_patch16_224.fb_in1k", **SMALL, num_classes=1000)
    path = tmp_path / "deit_base_patch16_224-b5f2ef4d.pth"
    torch.save({"model": state(ref)}, path)
    headless, record = build_teacher_backbone("deit_base_patch16", file=path, model_kwargs=SMALL)
    assert max_diff(headless, ref) < TOL and headless.num_classes == 0
    assert record["license"].startswith("Apache-2.0") and record["arch"] == "deit_base_patch16_224.fb_in1k"
    with_head, _ = build_teacher_backbone("deit_base_patch16", file=path, model_kwargs=dict(SMALL, num_classes=1000))
    with torch.no_grad():
        assert (with_head(images()) - ref(images())).abs().max() < TOL


def test_dino_raw_and_training_checkpoint(tmp_path):
    ref = random_vit("vit_base_patch16_224.dino", **SMALL)
    raw = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(state(ref), raw)
    # facebookresearch/dino main_dino.py: {'student', 'teacher', ...}; teacher = backbone.* + DINOHead head.*
    full = tmp_path / "checkpoint.pth"
    teacher = {f"backbone.{k}": v for k, v in state(ref).items()}
    teacher.update({"head.mlp.0.weight": torch.zeros(16, 64), "head.last_layer.weight_g": torch.ones(65536, 1)})
    torch.save({"teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_base")}, full)
    for path in (raw, full):
        model, _ = build_teacher_backbone("vit_base_patch16_224.dino", file=path, model_kwargs=SMALL)
        assert max_diff(model, ref) < TOL


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    ref = random_vit("vit_base_patch16_224.mae", **SMALL)
    path = tmp_path / "mae.safetensors"
    save_file(state(ref), str(path))
    model, record = build_teacher_backbone("mae_vit_base_patch16", file=path, model_kwargs=SMALL)
    assert max_diff(model, ref) < TOL and record["sha256"] == sha256(path)


def test_wrong_arch_is_named_with_the_fix(tmp_path):
    path = tmp_path / "mae.pth"
    torch.save({"model": state(random_vit("vit_base_patch16_224.mae", **SMALL))}, path)
    with pytest.raises(ValueError, match="arch"):
        build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=dict(SMALL, depth=3))
    with pytest.raises(ValueError, match="arch"):
        build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=dict(SMALL, embed_dim=32))


def test_quantised_weights_are_refused_naming_file_dtype_and_fix(tmp_path):
    path = tmp_path / "q.pth"  # load_state_dict would copy the raw integers into the float model
    ints = {k: v.to(torch.int8) for k, v in state(random_vit("vit_base_patch16_224.mae", **SMALL)).items()}
    torch.save({"model": {**ints, "position_ids": torch.arange(4)}}, path)  # an int64 index buffer is fine
    named = rf"^{re.escape(str(path))}: tensor 'cls_token' is int8, not floating point .*fp32"
    with pytest.raises(ValueError, match=named):
        build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=SMALL)


# ---------------------------------------------------------------- OpenAI CLIP and open_clip


class QuickGELU(nn.Module):
    def forward(self, x):  # openai/CLIP model.py
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """openai/CLIP model.py attribute names and forward (pre-LN, nn.MultiheadAttention)."""

    def __init__(self, d: int, h: int, act: type):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", act()), ("c_proj", nn.Linear(4 * d, d))])
        )
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):  # (N, B, D), sequence first as in CLIP
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d, depth, h, act):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(d, h, act) for _ in range(depth)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """openai/CLIP model.py VisionTransformer: the reference forward for the converted teacher."""

    def __init__(self, res=32, patch=16, d=64, depth=2, h=4, out=24, act=QuickGELU):
        super().__init__()
        scale = d**-0.5  # openai/CLIP's init scale, which keeps outputs near unit size
        self.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(d))
        self.positional_embedding = nn.Parameter(scale * torch.randn((res // patch) ** 2 + 1, d))
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = Transformer(d, depth, h, act)
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Parameter(scale * torch.randn(d, out))

    def tokens(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, L, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)  # (B, N, D)
        return self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)

    def forward(self, x):
        return self.ln_post(self.tokens(x)[:, 0, :]) @ self.proj  # (B, out)


class CLIP(nn.Module):
    """Enough of openai/CLIP's CLIP for the archive: `visual.*` plus text-side parameters."""

    def __init__(self, act=QuickGELU, **kw):
        super().__init__()
        self.visual = VisionTransformer(act=act, **kw)
        self.token_embedding = nn.Embedding(10, 16)
        self.ln_final = nn.LayerNorm(16)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x) * self.logit_scale.exp()


def random_clip(act=QuickGELU, seed=0, **kw) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(act=act, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def save_torchscript(model: nn.Module, path, size=32) -> None:
    """OpenAI released its models as traced TorchScript archives (clip.load(jit=True))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dtype = next(model.parameters()).dtype  # OpenAI archives hold fp16 weights
        torch.jit.trace(model, torch.randn(1, 3, size, size, dtype=dtype)).save(str(path))


# openai/CLIP names -> timm names, with the shape change each needs
OPENAI_TO_TIMM = {
    "visual.class_embedding": ("cls_token", lambda v: v.reshape(1, 1, -1)),
    "visual.positional_embedding": ("pos_embed", lambda v: v.unsqueeze(0)),
    "visual.conv1.weight": ("patch_embed.proj.weight", None),
    "visual.ln_pre.weight": ("norm_pre.weight", None),
    "visual.ln_pre.bias": ("norm_pre.bias", None),
    "visual.ln_post.weight": ("norm.weight", None),
    "visual.ln_post.bias": ("norm.bias", None),
    "visual.proj": ("head.weight", lambda v: v.t()),
}
OPENAI_BLOCK_TO_TIMM = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
CLIP_SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=32)


def test_torchscript_reader_matches_jit_state_dict(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    save_torchscript(random_clip(), path)
    ours = read_torchscript_state_dict(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.jit.load(str(path)).state_dict()  # our own file: safe to run here
    assert list(ours) == list(ref)
    assert all(torch.equal(ours[k], ref[k]) and ours[k].dtype == ref[k].dtype for k in ref)


def test_openai_clip_archive_key_by_key_and_quickgelu_forward(tmp_path):
    clip = random_clip()
    path = tmp_path / "ViT-B-16.pt"
    save_torchscript(clip, path)
    model, record = build_teacher_backbone(
        "clip_vit_base_patch16", file=path, model_kwargs=dict(CLIP_SMALL, num_classes=24)
    )
    got, source = model.state_dict(), clip.state_dict()
    mapped = set()
    for name, value in source.items():
        if not name.startswith("visual."):
            continue
        block = name.split(".")[3] if name.startswith("visual.transformer.resblocks.") else None
        if block is not None:
            rest = name.split(".", 4)[4]
            target, change = f"blocks.{block}.{OPENAI_BLOCK_TO_TIMM[rest]}", None
        else:
            target, change = OPENAI_TO_TIMM[name]
        assert torch.equal(got[target], change(value) if change else value), name
        mapped.add(target)
    assert set(got) - mapped == {"head.bias"} and not got["head.bias"].any()
    assert type(model.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert record["license"].startswith("MIT") and tuple(record["mean"]) == CLIP_MEAN
    with torch.no_grad():  # independent reference: openai/CLIP's own forward, QuickGELU
        assert (model(images()) - clip.visual(images())).abs().max() < TOL


def test_openai_clip_headless_gives_ln_post_tokens(tmp_path):
    clip = random_clip()
    path = tmp_path / "ViT-B-16.pt"
    save_torchscript(clip, path)
    model, _ = build_teacher_backbone("vit_base_patch16_clip_quickgelu_224.openai", file=path, model_kwargs=CLIP_SMALL)
    with torch.no_grad():
        tokens = model.forward_features(images())  # (B, N, D) after ln_post
        ref = clip.visual.ln_post(clip.visual.tokens(images()))
    assert tokens.shape == (2, 5, 64) and (tokens - ref).abs().max() < TOL


def test_openai_archive_into_plain_gelu_arch_is_refused(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    save_torchscript(random_clip(), path)
    with pytest.raises(ValueError, match="quickgelu"):
        build_teacher_backbone("vit_base_patch16_clip_224.openai", file=path, model_kwargs=CLIP_SMALL)


def test_openai_state_dict_pickle_and_open_clip_checkpoint(tmp_path):
    clip = random_clip(act=nn.GELU)  # open_clip's LAION ViT-B/16 uses GELU with OpenAI's names
    ref = tmp_path / "clip_state_dict.pt"
    torch.save(clip.state_dict(), ref)
    wrapped = tmp_path / "epoch_32.pt"  # open_clip training checkpoint: DDP names under 'state_dict'
    torch.save(
        {"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, wrapped
    )
    for path in (ref, wrapped):
        model, _ = build_teacher_backbone(
            "openclip_vit_base_patch16_laion2b", file=path, model_kwargs=dict(CLIP_SMALL, num_classes=24)
        )
        with torch.no_grad():
            assert (model(images()) - clip.visual(images())).abs().max() < TOL


def test_integer_entries_the_model_does_not_load_are_not_taken_for_quantised_weights(tmp_path):
    """A state dict with the text tower's integer entries (dropped by timm's converter): only entries that
    land on the model's float tensors are checked."""
    clip = random_clip(act=nn.GELU)
    path = tmp_path / "clip_state_dict.pt"
    torch.save({**clip.state_dict(), "context_length": torch.tensor(77, dtype=torch.int32)}, path)
    model, _ = build_teacher_backbone("openclip_vit_base_patch16_laion2b", file=path, model_kwargs=CLIP_SMALL)
    with torch.no_grad():
        assert (model.forward_features(images()) - clip.visual.ln_post(clip.visual.tokens(images()))).abs().max() < TOL


def test_open_clip_equals_timm_own_loader(tmp_path):
    clip = random_clip(act=nn.GELU)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), path)
    model, _ = build_teacher_backbone("vit_base_patch16_clip_224.laion2b", file=path, model_kwargs=CLIP_SMALL)
    reference = timm.create_model(
        "vit_base_patch16_clip_224.laion2b",
        pretrained=True,
        **CLIP_SMALL,
        num_classes=24,
        pretrained_cfg_overlay=dict(state_dict=clip.state_dict(), num_classes=24),
    )
    assert max_diff(model, reference) < TOL


# ---------------------------------------------------------------- Hugging Face transformers


def hf_vit_state(sd: dict) -> dict:
    """timm -> transformers ViTMAEModel names (modeling_vit_mae.py), q/k/v split from timm's [q; k; v]."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{kind}"].chunk(3, 0)
            out.update(
                {
                    f"{e}attention.attention.query.{kind}": q,
                    f"{e}attention.attention.key.{kind}": k,
                    f"{e}attention.attention.value.{kind}": v,
                    f"{e}attention.output.dense.{kind}": sd[f"{b}attn.proj.{kind}"],
                    f"{e}layernorm_before.{kind}": sd[f"{b}norm1.{kind}"],
                    f"{e}layernorm_after.{kind}": sd[f"{b}norm2.{kind}"],
                    f"{e}intermediate.dense.{kind}": sd[f"{b}mlp.fc1.{kind}"],
                    f"{e}output.dense.{kind}": sd[f"{b}mlp.fc2.{kind}"],
                }
            )
    return out


def hf_clip_state(sd: dict) -> dict:
    """timm CLIP tower -> transformers CLIPVisionModel names (modeling_clip.py)."""
    v = "vision_model."
    out = {
        f"{v}embeddings.class_embedding": sd["cls_token"].reshape(-1),
        f"{v}embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        f"{v}embeddings.position_embedding.weight": sd["pos_embed"][0],
        f"{v}embeddings.position_ids": torch.arange(sd["pos_embed"].shape[1]).unsqueeze(0),
        f"{v}pre_layrnorm.weight": sd["norm_pre.weight"],
        f"{v}pre_layrnorm.bias": sd["norm_pre.bias"],
        f"{v}post_layernorm.weight": sd["norm.weight"],
        f"{v}post_layernorm.bias": sd["norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, e = f"blocks.{i}.", f"{v}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, val = sd[f"{b}attn.qkv.{kind}"].chunk(3, 0)
            out.update(
                {
                    f"{e}self_attn.q_proj.{kind}": q,
                    f"{e}self_attn.k_proj.{kind}": k,
                    f"{e}self_attn.v_proj.{kind}": val,
                    f"{e}self_attn.out_proj.{kind}": sd[f"{b}attn.proj.{kind}"],
                    f"{e}layer_norm1.{kind}": sd[f"{b}norm1.{kind}"],
                    f"{e}layer_norm2.{kind}": sd[f"{b}norm2.{kind}"],
                    f"{e}mlp.fc1.{kind}": sd[f"{b}mlp.fc1.{kind}"],
                    f"{e}mlp.fc2.{kind}": sd[f"{b}mlp.fc2.{kind}"],
                }
            )
    return out


def test_hf_vit_mae_model_and_for_pretraining(tmp_path):
    ref = random_vit("vit_base_patch16_224.mae", **SMALL)
    hf = hf_vit_state(state(ref))
    assert "encoder.layer.1.attention.attention.value.bias" in hf
    model_file = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file(hf, str(model_file))
    pretraining = tmp_path / "pytorch_model.bin"  # ViTMAEForPreTraining: vit.* plus decoder.*
    torch.save(
        dict(
            {f"vit.{k}": v for k, v in hf.items()},
            **{"decoder.decoder_embed.weight": torch.zeros(8, 64), "decoder.mask_token": torch.zeros(1, 1, 8)},
        ),
        pretraining,
    )
    for path in (model_file, pretraining):
        model, record = build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=SMALL)
        assert max_diff(model, ref) < TOL and record["format"] == "hf-vit"


def test_hf_clip_vision_model(tmp_path):
    ref = random_vit("vit_base_patch16_clip_quickgelu_224.openai", **CLIP_SMALL, num_classes=24)
    sd = state(ref)
    hf = hf_clip_state(sd)
    hf["visual_projection.weight"] = sd["head.weight"]  # CLIPModel / CLIPVisionModelWithProjection
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    model, record = build_teacher_backbone("clip_vit_base_patch16", file=path, model_kwargs=CLIP_SMALL)
    assert max_diff(model, ref) < TOL and record["format"] == "hf-clip"


# ---------------------------------------------------------------- our own runs as teachers


def write_run(tmp_path, arch="vit_small_patch16_224", seed=0, **kw):
    kwargs = dict(SMALL, **kw)
    student = random_vit(arch, seed=seed, **kwargs)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = {
        "student": {
            "arch": arch,
            "model_kwargs": dict(kwargs, drop_path_rate=0.2),
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        }
    }
    save_checkpoint(
        run / "checkpoints" / "checkpoint-00000010.pt",
        {"model": {f"backbone.{k}": v for k, v in state(student).items()}, "config": config, "step": 10},
    )
    return run, student


def test_own_run_and_model_file_teach_the_next_stage(tmp_path):
    run, student = write_run(tmp_path)
    model, record = build_teacher_backbone("", file=run)
    assert max_diff(model, student) < TOL and record["license"] == OWN_RUN_LICENSE
    assert record["mean"] == [0.5, 0.5, 0.5] and record["sha256"]
    path = save_model_file(
        student, "vit_small_patch16_224", SMALL, tmp_path / "stage1.pt", mean=(0.1,) * 3, std=(0.2,) * 3
    )
    model, _ = build_teacher_backbone(None, file=path)
    assert max_diff(model, student) < TOL and model.pretrained_cfg["mean"] == (0.1,) * 3


# ---------------------------------------------------------------- safety


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_and_names_file_and_fix(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_weights(path)
    assert str(path) in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=SMALL)
    assert not marker.exists()


def test_torchscript_archive_with_code_global_is_refused(tmp_path):
    good = tmp_path / "ViT-B-16.pt"
    save_torchscript(random_clip(), good)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Exploit(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
        read_torchscript_state_dict(evil)
    assert not marker.exists()


# ---------------------------------------------------------------- grids


def test_teacher_input_size_reference_values():
    assert teacher_input_size((14, 14), 14) == (196, 196)  # /14 teacher for a /16 student at 224
    assert teacher_input_size((14, 14), 16) == (224, 224)
    assert teacher_input_size((12, 16), (8, 4)) == (96, 64)


def test_grid_kwargs_for_patch14_teacher():
    assert grid_model_kwargs("vit_large_patch14_clip_quickgelu_224", (14, 14)) == {"img_size": (196, 196)}
    assert grid_model_kwargs("vit_base_patch16_224", (14, 14), {"depth": 2}) == {"depth": 2}


def test_teacher_built_on_other_grid_has_resampled_pos_embed(tmp_path):
    ref = random_vit("vit_base_patch16_224.mae", **SMALL)  # grid 2 x 2
    path = tmp_path / "mae.pth"
    torch.save({"model": state(ref)}, path)
    model, _ = build_teacher_backbone("vit_base_patch16_224.mae", file=path, model_kwargs=dict(SMALL, img_size=48))
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=[3, 3], old_size=[2, 2], num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 10, 64)
    assert torch.allclose(model.pos_embed, expected) and torch.equal(model.pos_embed[:, 0], ref.pos_embed[:, 0])


# ---------------------------------------------------------------- registry and CLI


def test_registry_geometry_and_normalisation_match_timm():
    for spec in TEACHERS.values():
        g = arch_geometry(spec.arch)
        assert (g["width"], g["depth"], g["heads"], g["patch"][0]) == (spec.width, spec.depth, spec.heads, spec.patch)
        assert g["grid"][0] * spec.patch == spec.img_size, spec.name
    assert timm.models.get_pretrained_cfg(TEACHERS["clip_vit_base_patch16"].arch).mean == CLIP_MEAN


def test_each_official_file_names_where_it_is_stated():
    """The file a row names is the one its authors release: the basename of timm's own url where timm has one,
    else the name an upstream source states (pinned here, source in the row's note), or 'unverified'."""
    for spec in TEACHERS.values():
        assert spec.note and "*" not in spec.official_file, spec.name
        url = timm.models.get_pretrained_cfg(spec.arch).url
        if url:
            assert spec.official_file == url.rsplit("/", 1)[-1] and "timm url" in spec.note, spec.name
    files = {s.name: (s.official_file, s.note) for s in TEACHERS.values()}
    assert files["dinov2_vit_base_patch14_reg4"][0] == "dinov2_vitb14_reg4_pretrain.pth"
    assert files["dinov3_vit_base_patch16"][0] == "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"
    assert files["dinov3_vit_large_patch16"][0] == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert files["eva02_vit_base_patch14"][0] == "eva02_B_pt_in21k_p14.pt"
    assert files["pe_core_vit_base_patch16"][0] == "PE-Core-B16-224.pt"
    assert (
        files["siglip2_vit_base_patch16"][0] == "siglip2_b16_224.npz"
        and "big_vision" in files["siglip2_vit_base_patch16"][1]
    )
    assert files["radio_v3_vit_base_patch16"][1].startswith("unverified")
    for name in (
        "dinov3_vit_base_patch16",
        "eva02_vit_base_patch14",
        "pe_core_vit_base_patch16",
        "siglip2_vit_base_patch16",
    ):
        assert "/" in files[name][1] and "unverified" not in files[name][1], name  # a repository's path


def test_teachers_list_cli(capsys):
    assert teachers_main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mae = next(r for r in rows if r["name"] == "mae_vit_base_patch16")
    assert mae["license"].startswith("CC-BY-NC") and mae["width"] == 768 and mae["patch"] == 16
    assert teachers_main(["list"]) == 0 and "clip_vit_base_patch16" in capsys.readouterr().out


def test_prefetch_without_network_fails_clearly(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert teachers_main(["prefetch", "dino_vit_small_patch16", "--cache", str(tmp_path)]) == 1
    assert "internet" in capsys.readouterr().err


def test_offline_run_finds_prefetched_weights(tmp_path, monkeypatch):
    """The HF cache layout prefetch leaves (cache/hub/models--timm--NAME/snapshots/REV/...)."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ref = random_vit("vit_small_patch16_224.dino", **SMALL)
    repo = tmp_path / "hub" / "models--timm--vit_small_patch16_224.dino"
    rev = "0" * 40
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    save_file(state(ref), str(repo / "snapshots" / rev / "model.safetensors"))
    model, record = build_teacher_backbone(
        "dino_vit_small_patch16", pretrained=True, model_kwargs=SMALL, cache_dir=tmp_path / "hub"
    )
    assert max_diff(model, ref) < TOL
    assert record["sha256"] == sha256(repo / "snapshots" / rev / "model.safetensors")


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["timm", "mae", "mmseg", "mmpretrain"])
def test_export_round_trip(tmp_path, fmt):
    run, student = write_run(tmp_path)
    out = tmp_path / ("student.safetensors" if fmt == "timm" else f"student-{fmt}.pth")
    result = export(run, fmt, out, verify=True)
    assert result["max_feature_diff"] < 1e-6
    reloaded = (
        load_timm_export(f"{out}.json")
        if fmt == "timm"
        else build_teacher_backbone("vit_small_patch16_224", file=out, model_kwargs=SMALL)[0]
    )
    assert max_diff(reloaded, student) < 1e-6


def test_export_timm_loads_strictly_through_timm(tmp_path):
    from safetensors.torch import load_file, save_file

    run, _ = write_run(tmp_path)
    out = tmp_path / "student.safetensors"
    export(run, "timm", out)
    config = json.loads((tmp_path / "student.safetensors.json").read_text())
    assert config["pretrained_cfg_overlay"]["mean"] == [0.5, 0.5, 0.5] and config["provenance"]["git_sha"]
    sd = load_file(str(out))
    sd.pop("blocks.1.mlp.fc2.bias")
    save_file(sd, str(out))
    with pytest.raises(RuntimeError, match="blocks.1.mlp.fc2.bias"):
        load_timm_export(tmp_path / "student.safetensors.json")


def test_export_layouts_have_the_consumers_key_names(tmp_path):
    run, student = write_run(tmp_path)
    mae = tmp_path / "mae.pth"
    export(run, "mae", mae)
    sd = torch.load(mae, weights_only=True)["model"]
    assert sd["pos_embed"].shape == (1, 5, 64)  # CLS entry kept (ViTDet pretrain_use_cls_token=True)
    assert {"cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias", "norm.weight"} <= set(sd)
    seg = to_mm(state(student), "mmseg")
    assert {
        "layers.0.ln1.weight",
        "layers.0.attn.attn.in_proj_weight",
        "layers.0.attn.attn.out_proj.bias",
        "layers.0.ffn.layers.0.0.weight",
        "layers.0.ffn.layers.1.bias",
        "layers.1.ln2.bias",
        "patch_embed.projection.weight",
        "ln1.weight",
        "cls_token",
        "pos_embed",
    } <= set(seg)
    pre = to_mm(state(student), "mmpretrain")
    assert {"layers.0.attn.qkv.weight", "layers.0.attn.proj.weight", "layers.0.ffn.layers.0.0.bias"} <= set(pre)
    assert len(seg) == len(pre) == len(state(student))


def test_export_refuses_what_the_layout_cannot_hold(tmp_path):
    run, _ = write_run(tmp_path, arch="vit_base_patch16_clip_224")  # CLIP-style student: has norm_pre
    with pytest.raises(ValueError, match="norm_pre"):
        export(run, "mae", tmp_path / "x.pth")
    assert export(run, "mmpretrain", tmp_path / "y.pth", verify=True)["max_feature_diff"] < 1e-6


def test_export_cli(tmp_path, capsys):
    run, _ = write_run(tmp_path)
    assert export_main([str(run), "--format", "mae", "--out", str(tmp_path / "m.pth"), "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["max_feature_diff"] < 1e-6
    assert main(["export", str(tmp_path / "missing"), "--format", "mae", "--out", str(tmp_path / "n.pth")]) == 2
