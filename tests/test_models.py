"""Module contracts and equivalence with timm for the student, the teachers and their relations."""

import copy

import pytest
import timm
import torch
from conftest import TINY, tiny_run_config, tiny_vit

from hybrid_distill.build import build_models
from hybrid_distill.config import (
    ConfigError,
    RelationHeads,
    RelationKind,
    TeacherConfig,
    TeacherPrecision,
    from_dict,
)
from hybrid_distill.losses import distill_losses, smooth_l1
from hybrid_distill.masking import KeepGiven, KeepLeastRedundant, all_indices, least_redundant
from hybrid_distill.models.student import Student
from hybrid_distill.models.teacher import Teacher
from hybrid_distill.targets import FEATURES, Target, Targets


def every_patch(batch: int = 2, patches: int = 49) -> KeepGiven:
    return KeepGiven(all_indices(batch, patches))


def hand_logits(model, images, block_index, with_v=False):
    """R = q k^T of one block (eq. 2, unscaled) and its attention probabilities, from timm's non-fused
    attention (of a copy), captured by hooks; with_v: v too, (B, H, N, hd)."""
    model = copy.deepcopy(model)
    captured = {}
    attn = model.blocks[block_index].attn
    attn.fused_attn = False
    hook = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("p", i[0]))
    qkv = {}
    h2 = attn.qkv.register_forward_hook(lambda m, i, o: qkv.setdefault("x", o))
    model.forward_features(images)
    hook.remove(), h2.remove()
    B, N, _ = qkv["x"].shape
    q, k, v = qkv["x"].reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    R = q @ k.transpose(-2, -1)
    return (R, captured["p"], v) if with_v else (R, captured["p"])


def test_student_with_every_token_equals_timm_forward_features():
    backbone = tiny_vit().eval()
    target = Target("m", 4, 4, RelationKind.scaled)  # a block whose logits the student taps
    student = Student(backbone, [0.0] * 3, [1.0] * 3, [target]).eval()
    images = torch.rand(2, 3, 28, 28)
    out = student.forward_all(images)
    assert torch.allclose(out.tokens, backbone.forward_features(images), atol=1e-5)


def test_kept_token_student_equals_timm_on_the_gathered_sequence():
    backbone = tiny_vit().eval()
    student = Student(backbone, [0.0] * 3, [1.0] * 3, []).eval()
    images, keep = torch.rand(2, 3, 28, 28), torch.tensor([[0, 5, 9, 48], [1, 2, 3, 40]])
    tokens = backbone._pos_embed(backbone.patch_embed(images))
    gathered = torch.cat([tokens[:, :1], torch.stack([t[1:][k] for t, k in zip(tokens, keep)])], dim=1)
    expected = backbone.norm(backbone.blocks(gathered))
    assert torch.allclose(student(images, keep).tokens, expected, atol=1e-5)


def test_relations_equal_logits_by_hand_from_non_fused_timm_attention():
    model = tiny_vit()
    cfg = TeacherConfig(arch="x", relation_blocks=[-3, -2])
    teacher = Teacher("mim", cfg, model, (7, 7))
    images = torch.rand(2, 3, 28, 28)
    out = teacher(images, every_patch())
    assert sorted(out.relations) == [3, 4]  # block indices, resolved
    for block in (3, 4):  # the default kind is eq. 2's R = Q K^T, unscaled
        R, probs = hand_logits(model, teacher.normalize(images), block)
        assert torch.allclose(out.relations[block], R, atol=1e-5)
        assert torch.allclose((out.relations[block] * 16**-0.5).softmax(-1), probs, atol=1e-6)
    keep = torch.tensor([[0, 3, 7], [2, 4, 48]])
    kept = teacher(images, KeepGiven(keep)).relations[4]
    rows = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], dim=1)
    full = out.relations[4]
    by_hand = torch.stack([full[b][:, rows[b]][:, :, rows[b]] for b in range(2)])
    assert kept.shape == (2, 3, 4, 4) and torch.allclose(kept, by_hand, atol=1e-5)


def pruned_by_hand(model, pixels, counts: dict[int, int]):
    """PCAE-style pruning written out with timm blocks: after each block of `counts` only CLS and the
    least redundant patches go on; R = q k^T of blocks 3 and 4 at CLS + the final kept patches."""
    x = model._pos_embed(model.patch_embed(pixels))  # (B, 1 + L, D)
    keep, logits, chosen = all_indices(x.shape[0], x.shape[1] - 1), {}, None
    for i, block in enumerate(model.blocks[:5]):
        if i in (3, 4):
            h = block.norm1(x)
            q, k, _ = block.attn.qkv(h).reshape(*h.shape[:2], 3, 3, 16).permute(2, 0, 3, 1, 4)
            logits[i] = q @ k.transpose(-2, -1)  # (B, H, N, N) R over the tokens still there
        x = block(x)
        if i in counts:
            chosen = least_redundant(x[:, 1:], counts[i])  # (B, k) positions among the tokens still there
            keep = keep.gather(1, chosen)
            x = torch.cat([x[:, :1], torch.stack([t[1:][c] for t, c in zip(x, chosen)])], dim=1)
    rows = torch.cat([torch.zeros_like(chosen[:, :1]), chosen + 1], dim=1)  # the last selection, at block 4
    return keep, {
        i: torch.stack([lg[b][:, rows[b]][:, :, rows[b]] for b in range(len(lg))]) for i, lg in logits.items()
    }


def test_feature_target_is_final_norm_then_whitened():
    model = tiny_vit()
    teacher = Teacher("sup", TeacherConfig(arch="x", features=True), model, (7, 7))
    images = torch.rand(2, 3, 28, 28)
    feats = teacher(images, every_patch()).features
    expected = torch.nn.functional.layer_norm(model.forward_features(teacher.normalize(images)), (48,))
    assert torch.allclose(feats, expected, atol=1e-5)


def test_pruned_teacher_gives_the_keep_set_and_relations_written_out_by_hand():
    model = tiny_vit(1)
    picker = Teacher("mim", TeacherConfig(arch="x", relation_blocks=[-3, -2]), model, (7, 7))
    images = torch.rand(2, 3, 28, 28)
    counts = {0: 34, 2: 23, 4: 16}
    pruned = picker(images, KeepLeastRedundant(counts, prune=True))
    keep, logits = pruned_by_hand(model, picker.normalize(images), counts)
    assert torch.equal(pruned.keep, keep)
    for block in (3, 4):
        assert torch.allclose(pruned.relations[block], logits[block], atol=1e-5), block
    # without pruning every patch reaches every block: other relations, the first selection alike
    full = picker(images, KeepLeastRedundant(counts))
    assert not torch.allclose(full.relations[3], pruned.relations[3], atol=1e-3)
    assert torch.equal(
        picker(images, KeepLeastRedundant({0: 34})).keep, picker(images, KeepLeastRedundant({0: 34}, prune=True)).keep
    )


def test_every_student_parameter_gets_a_gradient_and_no_teacher_parameter_does(idx_folder, tmp_path):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path))
    student, teachers, _ = build_models(cfg)
    student.train()
    images = torch.rand(2, 3, 28, 28)
    targets = teachers(images)
    out = student(images, targets.keep)
    assert targets.keep.shape == (2, 16)  # 49 -> 34 -> 23 -> 16
    distill_losses(out, targets, {"sup": 1.0, "mim": 1.0}, 2.0)["loss"].backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(p.grad is None and not p.requires_grad for p in teachers.parameters())


def test_teachers_stay_in_eval_mode_after_train():
    teacher = Teacher("sup", TeacherConfig(arch="x", features=True), tiny_vit(), (7, 7))
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_clip_normalised_teacher_receives_clip_normalised_pixels():
    model = timm.create_model(
        "vit_base_patch16_clip_quickgelu_224",
        num_classes=0,
        pretrained=False,
        img_size=28,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=3,
    )
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    assert tuple(model.pretrained_cfg["mean"]) == clip_mean
    teacher = Teacher("clip", TeacherConfig(arch="x", features=True), model, (7, 7))
    seen = {}
    model.patch_embed.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    images = torch.rand(1, 3, 28, 28)
    teacher(images, every_patch(1))
    mean, std = torch.tensor(clip_mean).view(1, 3, 1, 1), torch.tensor(clip_std).view(1, 3, 1, 1)
    assert torch.allclose(seen["x"], (images - mean) / std, atol=1e-6)


def test_smooth_l1_by_hand_and_named_weighted_parts():
    pred, target = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0.5, 3.0, 0.0])
    # |d| = 0.5, 2, 5 with beta 2: 0.5 * d^2 / beta = 0.0625; |d| >= beta: |d| - beta / 2 = 1, 4
    assert torch.isclose(smooth_l1(pred, target, 2.0), torch.tensor((0.0625 + 1.0 + 4.0) / 3))

    c, m9, m10 = Target("c", 11, 5, FEATURES, 1), Target("m", 9, 4, "raw"), Target("m", 10, 4, "raw")

    class Out:
        values = {c: torch.zeros(1, 2, 1), m9: torch.zeros(1, 1, 2, 2), m10: torch.zeros(1, 1, 2, 2)}
        loss_mask = None

    targets = Targets(
        torch.zeros(1, 1, dtype=torch.long),
        {m9: torch.full((1, 1, 2, 2), 1.0), c: torch.full((1, 2, 1), 4.0), m10: torch.full((1, 1, 2, 2), 3.0)},
    )
    parts = distill_losses(Out(), targets, {"c": 1.0, "m": 0.5}, 2.0)
    assert parts["c/feat"].item() == pytest.approx(3.0)  # 4 - 1
    assert parts["m/rel9"].item() == pytest.approx(0.5 / 2 * 0.25)  # alpha / 2 blocks * 0.5 * 1 / 2
    assert parts["m/rel10"].item() == pytest.approx(0.5 / 2 * 2.0)  # alpha / 2 blocks * (3 - 1)
    assert parts["loss"].item() == pytest.approx(3.0 + 0.0625 + 0.5)


def test_head_count_mismatch_fails_naming_both_counts_and_the_switch(idx_folder, tmp_path):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"student.model_kwargs": {**TINY, "num_heads": 4}}))
    with pytest.raises(ConfigError, match=r"3 heads but the student has 4.*relation_heads=head_mean"):
        build_models(cfg)
    cfg.teachers.mim.relation_heads = RelationHeads.head_mean
    student, teachers, _ = build_models(cfg)
    out = student(torch.rand(1, 3, 28, 28), teachers(torch.rand(1, 3, 28, 28)).keep)
    assert out.relations["mim"][4].shape == (1, 1, 17, 17)


def test_token_grid_mismatch_fails_with_the_fix(idx_folder, tmp_path):
    values = tiny_run_config(idx_folder, tmp_path)
    values["teachers"]["sup"].update(model_kwargs={**TINY, "patch_size": 7}, match_grid=False)
    with pytest.raises(ConfigError, match=r"\(4, 4\) token grid but the student has \(7, 7\).*match_grid=true"):
        build_models(from_dict(values))
    values["teachers"]["sup"]["match_grid"] = True  # the default: built at 49 px, input resized
    student, teachers, _ = build_models(from_dict(values))
    assert teachers.teachers["sup"].model.patch_embed.img_size == (49, 49)
    assert teachers(torch.rand(1, 3, 28, 28)).features["sup"].shape == (1, 17, 48)


def test_activation_checkpointing_gives_the_same_gradients(idx_folder, tmp_path):
    grads = []
    for flag in (False, True):
        cfg = from_dict(
            tiny_run_config(idx_folder, tmp_path, **{"train.activation_checkpointing": flag, "student.drop_path": 0.0})
        )
        torch.manual_seed(0)
        student, teachers, _ = build_models(cfg)
        images = torch.rand(2, 3, 28, 28)
        targets = teachers(images)
        distill_losses(student(images, targets.keep), targets, {"sup": 1.0, "mim": 1.0}, 2.0)["loss"].backward()
        grads.append([p.grad.clone() for p in student.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_a_student_without_class_token_is_refused_in_one_line():
    no_cls = dict(class_token=False, global_pool="avg")
    assert not Teacher("siglip", TeacherConfig(arch="x", features=True), tiny_vit(**no_cls), (7, 7)).has_cls
    with pytest.raises(ConfigError, match=r"^the student has no class token"):
        Student(tiny_vit(**no_cls), [0.0] * 3, [1.0] * 3, [])
    Teacher("ok", TeacherConfig(arch="x", features=True), tiny_vit(reg_tokens=2), (7, 7))  # registers are fine


@pytest.mark.parametrize("kind", ["scaled", "softmax"])
def test_scaled_and_softmax_relations_stay_as_switches(kind):
    model = tiny_vit()
    teacher = Teacher("mim", TeacherConfig(arch="x", relation_blocks=[4], relation_kind=kind), model, (7, 7))
    images = torch.rand(2, 3, 28, 28)
    R, probs = hand_logits(model, teacher.normalize(images), 4)
    expected = R * 16**-0.5 if kind == "scaled" else probs  # head dim 48 / 3 = 16
    assert torch.allclose(teacher(images, every_patch()).relations[4], expected, atol=1e-5)


def test_msa_target_equals_softmax_of_scaled_qk_times_v_by_hand():
    model = tiny_vit(2)
    teacher = Teacher("mim", TeacherConfig(arch="x", relation_blocks=[3], relation_kind="msa"), model, (7, 7))
    images = torch.rand(2, 3, 28, 28)
    R, _, v = hand_logits(model, teacher.normalize(images), 3, with_v=True)
    by_hand = (R * 16**-0.5).softmax(-1) @ v  # (B, H, N, hd): eq. 2's MSA per head
    out = teacher(images, every_patch()).relations[3]
    assert out.shape == (2, 3, 50, 16) and torch.allclose(out, by_hand, atol=1e-5)
    keep = torch.tensor([[0, 3, 7], [2, 4, 48]])  # kept rows of the full-image MSA (eq. 1: T(x) ⊙ M)
    rows = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], dim=1)
    kept = teacher(images, KeepGiven(keep)).relations[3]
    assert torch.allclose(kept, torch.stack([by_hand[b][:, rows[b]] for b in range(2)]), atol=1e-5)


def test_a_teacher_lives_wholly_on_the_device_it_is_built_for():
    meta = torch.device("meta")
    teacher = Teacher("sup", TeacherConfig(arch="x", features=True), tiny_vit(), (7, 7), device=meta)
    assert {t.device for t in [*teacher.parameters(), *teacher.buffers()]} == {meta}  # Normalize's mean / std too
    bf16 = Teacher("sup", TeacherConfig(arch="x", features=True), tiny_vit(), (7, 7), TeacherPrecision.bf16, meta)
    assert {t.device for t in [*bf16.parameters(), *bf16.buffers()]} == {meta}
