"""Patch-14 teachers (DINOv2 and DINOv2 with registers: timm's vit_*_patch14_dinov2 / *_reg4_dinov2, layer
scale, 4 registers) beside a patch-4 student on a 7 x 7 grid, at tiny size with random weights:

1. relations equal the model's own pre-softmax attention logits, on its own grid and at the input size
   match_grid builds it at (98 px for 7 x 7 patches of 14);
3. the official DINOv2 release layout (facebookresearch/dinov2 hub checkpoints, dinov2_vits14_pretrain.pth
   and *_reg4_pretrain.pth: cls_token and pos_embed with a CLS entry, register_tokens, mask_token (1, D),
   blocks.N.ls1.gamma) loaded from a file the test writes, on its grid and on match_grid's;
(2. a training step and 4. the student's export: to come.)

Covered elsewhere for patch 14: grid_model_kwargs of a /14 CLIP (tests/test_weights.py
test_grid_kwargs_for_patch14_teacher) and the bilinear weights of a 2 x 2 map of patch 14 interpolated to
4 x 4 (tests/test_feature_grid.py)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from test_eva_teachers import at, cls_and, own_softmaxes
from timm.layers import resample_abs_pos_embed

from hybrid_distill.config import TeacherConfig
from hybrid_distill.masking import KeepGiven, all_indices
from hybrid_distill.models.teacher import Teacher, build_teacher_model
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
