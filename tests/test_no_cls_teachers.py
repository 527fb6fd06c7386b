"""Teachers without a class token (SigLIP: timm class_token=False, global_pool='map'): relations and token
targets at the kept patches, equal to the model's own; the CLS slot of the feature target holds the
model's pooled output (the summary); redundant-token selection without a CLS; a training step."""

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY, tiny_run_config
from test_eva_teachers import at, own_softmaxes

from hybrid_distill.config import ConfigError, TeacherConfig, from_dict
from hybrid_distill.masking import KeepGiven, KeepLeastRedundant, all_indices, least_redundant
from hybrid_distill.models.teacher import Teacher
from hybrid_distill.trainer import Trainer

SIGLIP = "vit_base_patch16_siglip_224"
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=0)
GRID, L = (4, 4), 16


def siglip(seed: int = 0, **extra):
    """A tiny random SigLIP-style ViT (no class token, attention-pool head), every parameter moved off init."""
    torch.manual_seed(seed)
    model = timm.create_model(SIGLIP, **{**SMALL, **extra}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert model.cls_token is None and model.attn_pool is not None
    return model


def test_relations_are_the_models_own_pre_softmax_logits_at_the_kept_patches():
    model = siglip()
    teacher = Teacher("sig", TeacherConfig(arch=SIGLIP, relation_blocks=[0, 1, 2], relation_kind="scaled"), model, GRID)
    images = torch.rand(2, 3, 32, 32)
    own = own_softmaxes(model, teacher.normalize(images)).inputs  # (B, H, L, L) per block
    keep = torch.tensor([[0, 3, 7, 15], [2, 4, 9, 10]])
    every = teacher(images, KeepGiven(all_indices(2, L))).relations
    kept = teacher(images, KeepGiven(keep)).relations
    for i in range(3):
        assert every[i].shape == (2, 4, L, L)  # patches only: no CLS row or column
        torch.testing.assert_close(every[i], own[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(kept[i], at(own[i], keep), rtol=0, atol=1e-5)


def test_the_cls_slot_holds_the_models_pooled_output_and_the_rest_its_patches():
    model = siglip(seed=1)
    cfg = TeacherConfig(arch=SIGLIP, features=True, whiten=False)
    teacher = Teacher("sig", cfg, model, GRID)
    images, keep = torch.rand(2, 3, 32, 32), torch.tensor([[1, 5, 6], [0, 8, 15]])
    with torch.no_grad():
        tokens = model.forward_features(teacher.normalize(images))  # (B, L, D), final norm applied
        pooled = model.forward_head(tokens, pre_logits=True)  # SigLIP's attention pool (B, D)
    target = teacher(images, KeepGiven(keep)).features
    assert target.shape == (2, 1 + 3, 64)
    torch.testing.assert_close(target[:, 0], pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(target[:, 1:], at(tokens, keep, dims=(1,)), rtol=0, atol=1e-5)
    whitened = Teacher("sig", TeacherConfig(arch=SIGLIP, features=True), model, GRID)(images, KeepGiven(keep))
    torch.testing.assert_close(whitened.features, F.layer_norm(target, (64,)), rtol=0, atol=1e-5)


def test_redundant_token_selection_scores_every_patch_without_a_cls():
    """Eq. 4 on the picker's tokens after block 0: with no prefix token, all L rows are patches."""
    model = siglip(seed=2)
    teacher = Teacher("sig", TeacherConfig(arch=SIGLIP, relation_blocks=[2]), model, GRID)
    images = torch.rand(2, 3, 32, 32)
    out = teacher(images, KeepLeastRedundant({0: 11}, prune=True))
    with torch.no_grad():
        x = model.blocks[0](model.norm_pre(model._pos_embed(model.patch_embed(teacher.normalize(images)))))
    torch.testing.assert_close(out.keep, least_redundant(x, 11))  # (B, 11) of all 16 patches scored
    assert out.relations[2].shape == (2, 4, 11, 11)


def test_a_no_cls_feature_target_at_an_earlier_block_is_refused_in_one_line():
    cfg = TeacherConfig(arch=SIGLIP, features=True, feature_block=1)
    with pytest.raises(ConfigError, match=r"has no class token: .* set teachers\.sig\.feature_block=-1"):
        Teacher("sig", cfg, siglip(), GRID)


@pytest.mark.parametrize("picker", ["mim", "sig"])
def test_a_training_step_with_a_siglip_teacher(idx_folder, tmp_path, picker):
    """Hybrid config: MAE-style relations and a SigLIP teacher's summary + patch features; or the SigLIP
    teacher as the token picker giving relations itself (patches only, pruned)."""
    sig = {"arch": SIGLIP, "weights": "random", "model_kwargs": dict(TINY), "features": True}
    extra = {"teachers.sig": sig, "train.max_steps": 1, "optim.warmup_epochs": 0, "masking.teacher": picker}
    if picker == "sig":
        extra |= {"teachers.sig.relation_blocks": [-3, -2], "masking.prune_teacher": True}
    values = tiny_run_config(idx_folder, tmp_path, **extra)
    del values["teachers"]["sup"]
    trainer = Trainer(from_dict(values))
    before = copy.deepcopy(trainer.student.state_dict())
    trainer.fit()
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    parts = ["sig/feat", "mim/rel3", "mim/rel4"] + (["sig/rel3", "sig/rel4"] if picker == "sig" else [])
    assert logged["skipped"] == 0 and all(math.isfinite(logged[k]) and logged[k] > 0 for k in parts)
    targets = trainer.teachers(torch.rand(2, 3, 28, 28))
    assert targets.keep.shape == (2, 16) and targets.features["sig"].shape == (2, 17, 48)
    if picker == "sig":
        assert targets.relations["sig"][3].shape == (2, 3, 16, 16)  # kept patches, no CLS
    moved = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, before[k])]
    assert "backbone.cls_token" in moved and "heads.sig.weight" in moved


def test_the_plain_step_gives_the_same_siglip_targets(idx_folder, tmp_path):
    """bench/plain.py (the oracle: boolean masks, full N x N logits) agrees on a teacher without a CLS."""
    from hybrid_distill.bench.plain import plain_targets
    from hybrid_distill.build import build_models

    sig = {"arch": SIGLIP, "weights": "random", "model_kwargs": dict(TINY), "features": True}
    values = tiny_run_config(idx_folder, tmp_path, **{"teachers.sig": sig, "teachers.sig.relation_blocks": [-2]})
    del values["teachers"]["sup"]
    values["masking"]["teacher"] = "sig"
    _, teachers, _ = build_models(from_dict(values))
    pixels = torch.rand(2, 3, 28, 28)
    fast = teachers(pixels)
    plain, _ = plain_targets(teachers, pixels)
    torch.testing.assert_close(plain.keep, fast.keep)
    torch.testing.assert_close(plain.features["sig"], fast.features["sig"], rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.relations["sig"][4], fast.relations["sig"][4], rtol=0, atol=1e-4)
