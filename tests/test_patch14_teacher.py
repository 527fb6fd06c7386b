"""Patch-14 teachers (DINOv2 and DINOv2 with registers: timm's vit_*_patch14_dinov2 / *_reg4_dinov2, layer
scale, 4 registers) beside a patch-4 student on a 7 x 7 grid, at tiny size with random weights:

1. relations equal the model's own pre-softmax attention logits, on its own grid and at the input size
   match_grid builds it at (98 px for 7 x 7 patches of 14);
2. one optimiser step of a hybrid config with the patch-14 model as the MIM teacher (relations, token
   picking; match_grid) and, apart, as the feature teacher (match_grid, and interpolate_features from its
   own 4 x 4 grid); picking or relating its tokens on another grid refused in one line;
3. the official DINOv2 release layout (facebookresearch/dinov2 hub checkpoints, dinov2_vits14_pretrain.pth
   and *_reg4_pretrain.pth: cls_token and pos_embed with a CLS entry, register_tokens, mask_token (1, D),
   blocks.N.ls1.gamma) loaded from a file the test writes, on its grid and on match_grid's;
4. the student of that step exported for timm and loaded back by timm itself, outputs equal.

Covered elsewhere for patch 14: grid_model_kwargs of a /14 CLIP (tests/test_weights.py
test_grid_kwargs_for_patch14_teacher) and the bilinear weights of a 2 x 2 map of patch 14 interpolated to
4 x 4 (tests/test_feature_grid.py)."""

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_run_config
from test_eva_teachers import at, cls_and, own_softmaxes
from timm.layers import resample_abs_pos_embed

from hybrid_distill import cli
from hybrid_distill.config import ConfigError, TeacherConfig, from_dict
from hybrid_distill.masking import KeepGiven, all_indices
from hybrid_distill.models.attention import choose_attention
from hybrid_distill.models.teacher import Teacher, build_teacher_model
from hybrid_distill.trainer import Trainer
from hybrid_distill.weights.export import export, load_timm_export
from hybrid_distill.weights.teachers import build_teacher_backbone

ARCHS = {"dinov2": "vit_small_patch14_dinov2", "dinov2_reg4": "vit_small_patch14_reg4_dinov2"}
SMALL = dict(img_size=56, embed_dim=64, depth=3, num_heads=4)  # 4 x 4 patches of 14 px
STEP = dict(embed_dim=48, depth=4, num_heads=3)  # the student's head count (TINY: 3 heads of 16)
STUDENT_GRID = (7, 7)  # TINY: patch 4 at 28 px


def dinov2(family: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A tiny random patch-14 DINOv2, every parameter (layer scales, norms, registers) moved off timm's init."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCHS[family], num_classes=0, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert model.patch_embed.patch_size == (14, 14)
    return model


def official_layout(model, seed: int = 1) -> dict:
    """A timm DINOv2 in facebookresearch/dinov2's names (dinov2/models/vision_transformer.py): pos_embed
    (1, 1 + L, D) with a CLS entry, added to cls_token before the registers are inserted
    (prepare_tokens_with_masks), register_tokens (1, R, D), mask_token (1, D); blocks as timm names them (norm1,
    attn.qkv, ls1.gamma, mlp.fc1, ...). timm's reg4 model folds the CLS position into cls_token (no_embed_class):
    the file gets a random CLS position and `model`'s cls_token becomes the file's plus it, so a loader that
    dropped the position would give another model."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    D = sd["cls_token"].shape[-1]
    if "reg_token" in sd:
        cls_pos = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(seed))
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        with torch.no_grad():
            model.cls_token.add_(cls_pos)
    sd["mask_token"] = torch.zeros(1, D)
    assert sd["pos_embed"].shape[1] == 1 + model.patch_embed.num_patches
    return sd


def same_model(a, b) -> None:
    """Every tensor exactly, and forward_features (registers included) within 1e-6."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    pixels = torch.rand(2, 3, *a.patch_embed.img_size)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_features(pixels), a.forward_features(pixels), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- 1. relations = the model's own logits


@pytest.mark.parametrize("family", ARCHS)
def test_relations_are_the_models_own_pre_softmax_logits_on_its_own_grid(family):
    model = dinov2(family)
    grid, L, P = (4, 4), 16, model.num_prefix_tokens
    cfg = TeacherConfig(arch=ARCHS[family], relation_blocks=[0, 1, 2], relation_kind="scaled")
    teacher = Teacher("mim", cfg, model, grid)
    images = torch.rand(2, 3, 56, 56)
    own = own_softmaxes(model, teacher.normalize(images)).inputs  # (B, H, P + L, P + L) per block
    every, keep = all_indices(2, L), torch.tensor([[0, 3, 7, 15], [2, 4, 9, 10]])
    out, kept = teacher(images, KeepGiven(every)).relations, teacher(images, KeepGiven(keep)).relations
    for i in range(3):
        assert out[i].shape == (2, 4, 1 + L, 1 + L)  # CLS + patches, registers dropped
        torch.testing.assert_close(out[i], at(own[i], cls_and(every, P)), rtol=0, atol=1e-5)
        torch.testing.assert_close(kept[i], at(own[i], cls_and(keep, P)), rtol=0, atol=1e-5)
    raw = Teacher("mim", TeacherConfig(arch="x", relation_blocks=[2]), model, grid)(images, KeepGiven(keep))
    torch.testing.assert_close(raw.relations[2] * model.blocks[2].attn.scale, kept[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ARCHS)
def test_relations_at_match_grids_input_size_are_the_models_own_on_the_resized_image(family):
    """The patch-14 teacher built for the student's 7 x 7 grid (98 px, as match_grid builds it): the 28 px
    batch resized bicubically (antialiased) to 98 px, then the model's own logits at CLS + kept."""
    model = dinov2(family, seed=1, img_size=98)
    assert model.patch_embed.grid_size == STUDENT_GRID
    P, L = model.num_prefix_tokens, 49
    cfg = TeacherConfig(arch=ARCHS[family], relation_blocks=[1, 2], relation_kind="scaled")
    teacher = Teacher("mim", cfg, model, STUDENT_GRID)
    images = torch.rand(2, 3, 28, 28)
    resized = F.interpolate(images, size=(98, 98), mode="bicubic", align_corners=False, antialias=True)
    own = own_softmaxes(model, teacher.normalize(resized)).inputs
    keep = torch.stack([torch.arange(0, L, 3), torch.cat([torch.arange(1, L, 3), torch.tensor([48])])])  # (2, 17)
    kept = teacher(images, KeepGiven(keep)).relations
    for i in (1, 2):
        assert kept[i].shape == (2, 4, 18, 18)
        torch.testing.assert_close(kept[i], at(own[i], cls_and(keep, P)), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- 3. the official layout


@pytest.mark.parametrize("family", ARCHS)
def test_a_file_in_the_official_dinov2_layout_loads_into_the_timm_model(family, tmp_path):
    model = dinov2(family)
    path = tmp_path / f"dinov2_vits14{'_reg4' if 'reg' in family else ''}_pretrain.pth"
    torch.save(official_layout(model), path)  # the hub's files are torch pickles of a plain state dict
    loaded, record = build_teacher_backbone(ARCHS[family], file=path, model_kwargs=SMALL)
    assert record["format"] == "dinov2" and record["patch_size"] == [14, 14] and record["grid"] == [4, 4]
    assert record["prefix_tokens"] == model.num_prefix_tokens
    same_model(model, loaded)  # every tensor exactly, forward_features within 1e-6


@pytest.mark.parametrize("prefix", ["module.", "backbone."])
def test_the_official_layout_inside_a_ddp_or_training_wrapper_loads_too(prefix, tmp_path):
    model = dinov2("dinov2_reg4")
    path = tmp_path / "wrapped.pth"
    torch.save({"teacher": {prefix + k: v for k, v in official_layout(model).items()}}, path)
    loaded, record = build_teacher_backbone(ARCHS["dinov2_reg4"], file=path, model_kwargs=SMALL)
    assert record["format"].startswith("dinov2") and record["prefix_tokens"] == model.num_prefix_tokens
    same_model(model, loaded)


def test_the_listed_dinov2_names_load_the_official_layout_with_their_licence(tmp_path):
    """`teachers list` names (ViT-B/14 rows) at tiny size through model_kwargs: the hub file's names and licence."""
    model = dinov2("dinov2_reg4")
    torch.save(official_layout(model), tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    loaded, record = build_teacher_backbone(
        "dinov2_vit_base_patch14_reg4", file=tmp_path / "dinov2_vitb14_reg4_pretrain.pth", model_kwargs=SMALL
    )
    assert record["arch"] == "vit_base_patch14_reg4_dinov2.lvd142m" and record["license"].startswith("Apache-2.0")
    same_model(model, loaded)


@pytest.mark.parametrize("family", ARCHS)
def test_the_official_file_on_match_grids_grid_has_its_patch_positions_resampled(family, tmp_path):
    """The hub's files hold a 37 x 37 position grid (518 px); here 4 x 4, the teacher built by match_grid at
    98 px (7 x 7). Without registers the CLS entry stays as it is beside the resampled patch grid; with
    registers timm keeps no position for CLS or registers: CLS absorbs its entry and only the 4 x 4 patch grid
    is resampled (bicubic, antialiased, as timm's filter does)."""
    model = dinov2(family)
    official = official_layout(model)
    torch.save(official, tmp_path / "dinov2.pth")
    kwargs = {k: v for k, v in SMALL.items() if k != "img_size"}
    cfg = TeacherConfig(arch=ARCHS[family], weights=str(tmp_path / "dinov2.pth"), model_kwargs=kwargs)
    built, record = build_teacher_model("mim", cfg, STUDENT_GRID)
    assert record["grid"] == [7, 7] and record["img_size"] == [98, 98] and record["format"] == "dinov2"
    registers = "register_tokens" in official
    pos = official["pos_embed"][:, 1:] if registers else official["pos_embed"]
    expected = resample_abs_pos_embed(pos, new_size=[7, 7], old_size=[4, 4], num_prefix_tokens=0 if registers else 1)
    assert built.pos_embed.shape == (1, 49 if registers else 50, 64)
    torch.testing.assert_close(built.pos_embed.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(built.cls_token.detach(), model.cls_token.detach(), rtol=0, atol=0)
    if registers:
        torch.testing.assert_close(built.reg_token.detach(), official["register_tokens"], rtol=0, atol=0)
    else:
        torch.testing.assert_close(built.pos_embed[:, 0].detach(), official["pos_embed"][:, 0], rtol=0, atol=0)


def test_an_mae_checkpoint_with_its_mask_token_is_still_read_as_mae(tmp_path):
    """MAE's mask token is the decoder's (1, 1, D_dec) beside decoder_* keys; DINOv2's is (1, D) with none."""
    from test_weights import SMALL as VIT_SMALL
    from test_weights import random_vit, state

    ref = random_vit("vit_base_patch16_224.mae", **VIT_SMALL)
    mae = dict(state(ref), mask_token=torch.zeros(1, 1, 32), **{"decoder_embed.weight": torch.zeros(32, 64)})
    torch.save({"model": mae}, tmp_path / "mae.pth")
    _, record = build_teacher_backbone("vit_base_patch16_224.mae", file=tmp_path / "mae.pth", model_kwargs=VIT_SMALL)
    assert record["format"] == "timm ('model' wrapper)"


# ---------------------------------------------------------------- 2 and 4. a training step, the export


def patch14(family: str, **extra) -> dict:
    return {"arch": ARCHS[family], "weights": "random", "model_kwargs": dict(STEP), **extra}


def step_and_export(values: dict, tmp_path) -> tuple[Trainer, dict]:
    """One optimiser step (lr > 0 at step 0), the student moved, every logged part finite and positive; then
    the student exported as FILE.safetensors and loaded by timm itself, as the export's json says."""
    trainer = Trainer(from_dict(values))
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    parts = [k for k in logged if k.endswith("/feat") or "/rel" in k]
    assert trainer.step == 1 and logged["skipped"] == 0
    assert parts and all(math.isfinite(logged[k]) and logged[k] > 0 for k in parts), logged
    moved = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, before[k])]
    assert "backbone.blocks.0.attn.qkv.weight" in moved and "backbone.blocks.5.attn.qkv.weight" in moved

    out = tmp_path / "export" / "student.safetensors"
    assert export(trainer.run_dir, "timm", out, verify=True)["max_feature_diff"] < 1e-6
    config = json.loads((tmp_path / "export" / "student.safetensors.json").read_text())
    reloaded = timm.create_model(  # the documented call, by hand
        config["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(config["pretrained_cfg_overlay"], file=str(out)),
        **config["model_kwargs"],
    ).eval()
    student = copy.deepcopy(trainer.student.backbone).eval()
    for name, tensor in student.state_dict().items():  # the trained weights, exactly
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    choose_attention(student, reloaded.blocks[0].attn.fused_attn)  # the student trains on the explicit path
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward_features(x), student.forward_features(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(reloaded(x), student(x), rtol=0, atol=1e-6)
    strict = timm.create_model(config["architecture"], num_classes=0, **config["model_kwargs"])
    strict.load_state_dict(load_timm_export(out.with_name(out.name + ".json")).state_dict(), strict=True)
    assert reloaded.patch_embed.grid_size == STUDENT_GRID
    return trainer, logged


def test_a_step_with_a_patch14_mim_teacher_from_the_official_layout_on_match_grids_grid(idx_folder, tmp_path):
    """The DINOv2-with-registers MIM teacher, read from an official-layout file at its 4 x 4 grid, built at 98
    px for the student's 7 x 7 (match_grid, the default): relations at blocks 1 and 2, and it picks the tokens."""
    official = official_layout(dinov2("dinov2_reg4", **STEP))
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    mim = patch14("dinov2_reg4", weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), relation_blocks=[-3, -2])
    values = tiny_run_config(
        idx_folder, tmp_path, **{"teachers.mim": mim, "train.max_steps": 1, "optim.warmup_epochs": 0}
    )
    trainer, logged = step_and_export(values, tmp_path)
    teacher = trainer.teachers.teachers["mim"]
    assert teacher.model.patch_embed.patch_size == (14, 14) and teacher.model.patch_embed.img_size == (98, 98)
    assert teacher.model.num_prefix_tokens == 5
    assert {"mim/rel1", "mim/rel2", "sup/feat"} <= set(logged)
    targets = trainer.teachers(torch.rand(2, 3, 28, 28))
    K = targets.keep.shape[1]
    assert 0 < K < 49 and targets.relations["mim"][2].shape == (2, 3, 1 + K, 1 + K)
    assert targets.keep.max() < 49  # kept positions are on the student's grid


@pytest.mark.parametrize("grid", ["match_grid", "interpolate_features"])
def test_a_step_with_a_patch14_feature_teacher(grid, idx_folder, tmp_path):
    """DINOv2 (no registers) as the feature teacher: built at 98 px (7 x 7) with match_grid, or at its own 56 px
    (4 x 4) with its last block's map resized to 7 x 7 (interpolate_features)."""
    sup = patch14("dinov2", features=True)
    if grid == "interpolate_features":
        sup.update(match_grid=False, interpolate_features=True, model_kwargs={**STEP, "img_size": 56})
    values = tiny_run_config(
        idx_folder, tmp_path, **{"teachers.sup": sup, "train.max_steps": 1, "optim.warmup_epochs": 0}
    )
    trainer, logged = step_and_export(values, tmp_path)
    teacher = trainer.teachers.teachers["sup"]
    assert teacher.model.patch_embed.patch_size == (14, 14)
    assert tuple(teacher.model.patch_embed.grid_size) == ((4, 4) if grid == "interpolate_features" else STUDENT_GRID)
    assert "sup/feat" in logged and "mim/rel4" in logged
    targets = trainer.teachers(torch.rand(2, 3, 28, 28))
    assert targets.features["sup"].shape == (2, 1 + targets.keep.shape[1], 48)


@pytest.mark.parametrize(
    "extra, said",
    [
        (
            {},
            r"masking\.teacher='mim' would pick tokens on another grid .*: set teachers\.mim\.match_grid=true",
        ),
        ({"masking.teacher": "sup"}, r"teachers\.mim\.relation_blocks relate tokens of another grid"),
    ],
)
def test_a_patch14_mim_teacher_on_its_own_grid_is_refused_in_one_line(extra, said, idx_folder, tmp_path):
    """Picking (masking) or relating the patch-14 teacher's 4 x 4 tokens for the student's 7 x 7 has no meaning."""
    mim = patch14("dinov2_reg4", relation_blocks=[-2], match_grid=False, interpolate_features=True)
    mim["model_kwargs"]["img_size"] = 56
    values = tiny_run_config(idx_folder, tmp_path, **{"teachers.mim": mim, **extra})
    with pytest.raises(ConfigError, match=said) as err:
        from_dict(values)
    assert "\n" not in str(err.value)


def test_a_patch14_teacher_on_its_own_grid_without_interpolation_is_refused_in_one_line(idx_folder, tmp_path, capsys):
    """Neither match_grid nor interpolate_features: `train --dry-run` stops in one line, exit code 2."""
    mim = patch14("dinov2_reg4", relation_blocks=[-2], match_grid=False)
    mim["model_kwargs"]["img_size"] = 56
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(idx_folder, tmp_path, **{"teachers.mim": mim})))
    assert cli.main(["train", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'mim' has a (4, 4) token grid but the student has (7, 7)" in err, err
    assert "teachers.mim.match_grid=true" in err and "teachers.mim.interpolate_features=true" in err
