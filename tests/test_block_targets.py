"""Targets at any teacher block, matched at a named student block (paper eq. 2, Tables 5-8), and the
`last` ("direct", Table 8) masking: reference values by hand, module contracts, one-line refusals."""

import pytest
import torch
from conftest import TINY, tiny_run_config

from hybrid_distill.build import build_models
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.losses import distill_losses
from hybrid_distill.masking import least_redundant
from hybrid_distill.matching import same_relative_depth


def built(idx_folder, tmp_path, **extra):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"student.drop_path": 0.0, **extra}))
    return build_models(cfg)


def step(student, teachers, images):
    targets = teachers(images)
    out = student(images, targets.keep)
    return targets, out, distill_losses(out, targets, {"sup": 1.0, "mim": 1.0}, 2.0)


def test_same_relative_depth_is_the_identity_at_equal_depths_and_scales_otherwise():
    assert [same_relative_depth(b, 12, 12) for b in range(12)] == list(range(12))
    assert same_relative_depth(9, 12, 6) == 4 and same_relative_depth(10, 12, 6) == 4  # 10th / 11th of 12
    assert same_relative_depth(11, 12, 6) == 5 and same_relative_depth(0, 12, 6) == 0
    assert same_relative_depth(22, 24, 12) == 10  # ViT-L teacher's L-2 -> ViT-B student's L-2


def test_last_masking_selects_once_after_the_pickers_final_block(idx_folder, tmp_path):
    _, teachers, _ = built(idx_folder, tmp_path, **{"masking.strategy": "last"})
    assert teachers.schedule == {5: 16}  # 49 -> 16, the progressive schedule's final count
    mim = teachers.teachers["mim"]
    images = torch.rand(2, 3, 28, 28)
    x, _ = mim.embed(images)
    for block in mim.model.blocks:  # every block runs, although relations stop at block 4
        x = block(x)
    assert torch.equal(teachers(images).keep, least_redundant(x[:, 1:], 16))


def test_block_features_get_their_own_heads_at_their_student_blocks(idx_folder, tmp_path):
    student, teachers, _ = built(idx_folder, tmp_path, **{"teachers.mim.relation_kind": "features"})
    assert sorted(student.heads) == ["mim_block3", "mim_block4", "sup"]
    images = torch.rand(2, 3, 28, 28)
    targets, out, parts = step(student, teachers, images)
    assert sorted(out.relations["mim"]) == [3, 4] and out.relations["mim"][3].shape == (2, 17, 48)
    # the target is the teacher's block output at CLS + kept, whitened, without the final norm
    mim, keep = teachers.teachers["mim"], targets.keep
    x, _ = mim.embed(images)
    for block in mim.model.blocks[:4]:
        x = block(x)
    rows = torch.cat([x[:, :1], torch.stack([t[1:][k] for t, k in zip(x, keep)])], dim=1)
    assert torch.allclose(targets.relations["mim"][3], torch.nn.functional.layer_norm(rows, (48,)), atol=1e-5)
    # the student's head reads its own block 3 output
    bb = student.backbone
    y = bb._pos_embed(bb.patch_embed(student.normalize(images)))
    y = torch.cat([y[:, :1], torch.stack([t[1:][k] for t, k in zip(y, keep)])], dim=1)
    for block in bb.blocks[:4]:
        y = block(y)
    assert torch.allclose(out.relations["mim"][3], student.heads["mim_block3"](y), atol=1e-5)
    parts["loss"].backward()
    assert all(student.heads[n].weight.grad.abs().sum() > 0 for n in student.heads)


def test_an_intermediate_feature_block_is_matched_at_its_student_block(idx_folder, tmp_path):
    student, teachers, _ = built(
        idx_folder, tmp_path, **{"teachers.sup.feature_block": 2, "student.model_kwargs": {**TINY, "depth": 3}}
    )
    # teacher block 2 of 6 -> student block 0 of 3; relation blocks 3, 4 of 6 -> 1 of 3
    assert [(t.part, t.teacher_block, t.student_block) for t in student.targets] == [
        ("sup/feat", 2, 0),
        ("mim/rel3", 3, 1),
        ("mim/rel4", 4, 1),
    ]
    targets, out, parts = step(student, teachers, torch.rand(2, 3, 28, 28))
    assert out.features["sup"].shape == targets.features["sup"].shape == (2, 17, 48)
    assert torch.isfinite(parts["loss"])


def test_student_blocks_names_the_matching_block(idx_folder, tmp_path):
    student, _, _ = built(
        idx_folder,
        tmp_path,
        **{"student.model_kwargs": {**TINY, "depth": 4}, "teachers.mim.student_blocks": {-3: 0, 4: 2}},
    )
    # the last block's features are the student's last block's; the relations go where they are named
    assert [(t.part, t.teacher_block, t.student_block) for t in student.targets] == [
        ("sup/feat", 5, 3),
        ("mim/rel3", 3, 0),
        ("mim/rel4", 4, 2),
    ]


def test_student_msa_matches_its_target_and_by_hand(idx_folder, tmp_path):
    student, teachers, _ = built(idx_folder, tmp_path, **{"teachers.mim.relation_kind": "msa"})
    images = torch.rand(2, 3, 28, 28)
    targets, out, parts = step(student, teachers, images)
    assert out.relations["mim"][4].shape == targets.relations["mim"][4].shape == (2, 3, 17, 16)
    bb = student.backbone
    y = bb._pos_embed(bb.patch_embed(student.normalize(images)))
    y = torch.cat([y[:, :1], torch.stack([t[1:][k] for t, k in zip(y, targets.keep)])], dim=1)
    for block in bb.blocks[:4]:
        y = block(y)
    attn = bb.blocks[4].attn
    q, k, v = attn.qkv(bb.blocks[4].norm1(y)).reshape(2, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)
    assert torch.allclose(out.relations["mim"][4], (q @ k.transpose(-2, -1) * 16**-0.5).softmax(-1) @ v, atol=1e-5)
    assert parts["mim/rel4"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"teachers.mim.relation_blocks": [6]},
            r"^teachers\.mim\.relation_blocks: block 6 does not exist in a model with 6 blocks",
        ),
        (
            {"teachers.mim.student_blocks": {-2: 9}},
            r"^teachers\.mim\.student_blocks\.-2 \(the student\): block 9 does not",
        ),
        ({"teachers.mim.student_blocks": {1: 0}}, r"^teachers\.mim\.student_blocks: teacher block 1 gives no target"),
        (
            {"teachers.mim.relation_kind": "msa", "student.model_kwargs": {**TINY, "num_heads": 4}},
            r"^teacher 'mim' has 3 heads but the student has 4: per-head",
        ),
        (
            {
                "teachers.mim.relation_kind": "msa",
                "teachers.mim.relation_heads": "head_mean",
                "student.model_kwargs": {**TINY, "embed_dim": 36},
            },
            r"^teachers\.mim\.relation_kind=msa compares head outputs of width 16 \(teacher\) and 12 \(student\)",
        ),
    ],
)
def test_what_the_student_cannot_match_fails_in_one_line(idx_folder, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message) as err:
        built(idx_folder, tmp_path, **extra)
    assert "\n" not in str(err.value)
