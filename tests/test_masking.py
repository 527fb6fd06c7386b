"""Redundant-token masking: reference values by hand and the paper's ViT-B schedule."""

import torch

from hybrid_distill.config import MaskingConfig, Strategy
from hybrid_distill.masking import (
    KeepLeastRedundant,
    num_kept,
    positions_within,
    redundancy_scores,
    redundant_keep_indices,
    schedule_counts,
    selection_blocks,
)
from hybrid_distill.models.tokens import cls_and_patches, keep_with_prefix
from hybrid_distill.targets import TeacherSet


def test_scores_by_hand():
    # unit vectors e1, e1, e2, (e1+e2)/sqrt2 -> mean m = (1 + 1 + 0 + .7071, 0 + 0 + 1 + .7071) / 4
    tokens = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    r = 2**-0.5
    m = torch.tensor([(2 + r) / 4, (1 + r) / 4])
    unit = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [r, r]])
    assert torch.allclose(redundancy_scores(tokens)[0], unit @ m)


def test_keep_indices_drop_the_most_mean_like_and_are_sorted():
    # scores by hand: [0.677, 0.677, 0.427, 0.780] -> keep floor(4 * 0.5) = 2 least similar: 2 and then 0 or 1
    tokens = torch.tensor(
        [[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0], [5.0, 0.0], [0.0, 2.0]]]
    )
    keep = redundant_keep_indices(tokens, 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (2, 2)
    assert keep[0, 1] == 2 and keep[0, 0] in (0, 1)
    # image 2: unit e2, (e1+e2)/r2, e1, e2 -> mean (0.427, 0.677); scores 0.677, 0.780, 0.427, 0.677
    assert 2 in keep[1].tolist() and torch.equal(keep, keep.sort(dim=1).values)
    # the (1, 1) token is the most mean-like in both images and is dropped
    assert 3 not in keep[0].tolist() and 1 not in keep[1].tolist()


def test_vit_b_schedule_196_137_95_66():
    assert schedule_counts(196, 0.7, 3) == [196, 137, 95, 66]
    assert selection_blocks(12) == [0, 4, 8]
    assert num_kept(70, 0.7) == 49  # 70 * 0.7 is 48.99999999999999 in floats


def test_teacher_set_schedules_progressive_and_last():
    class Fake(torch.nn.Module):
        depth = 12

    progressive = TeacherSet({"mim": Fake()}, MaskingConfig(teacher="mim"), 196)
    assert progressive.schedule == {0: 137, 4: 95, 8: 66} and progressive.num_kept == 66
    select = progressive.selector(2, "cpu")
    assert isinstance(select, KeepLeastRedundant) and select.blocks == (0, 4, 8) and not select.prune
    last = TeacherSet({"mim": Fake()}, MaskingConfig(teacher="mim", strategy=Strategy.last), 196)
    assert last.schedule == {11: 66} and last.num_kept == 66  # one selection after the final block
    none = TeacherSet({"mim": Fake()}, MaskingConfig(teacher="mim", strategy=Strategy.none), 196)
    assert none.schedule == {} and none.selector(2, "cpu").start(2, 196, "cpu").shape == (2, 196)
    rand = TeacherSet({"mim": Fake()}, MaskingConfig(teacher="mim", strategy=Strategy.random), 196)
    select = rand.selector(3, "cpu")
    assert select.blocks == ()
    keep = select.start(3, 196, "cpu")
    assert keep.shape == (3, 66) and all(len(set(k.tolist())) == 66 for k in keep)


def test_gather_helpers_keep_cls_and_drop_registers():
    x = torch.arange(2 * 7).reshape(1, 7, 2).float()  # CLS, 2 registers, 4 patches
    keep = torch.tensor([[1, 3]])
    assert torch.equal(keep_with_prefix(x, keep, 3)[0, :, 0], torch.tensor([0.0, 2.0, 4.0, 8.0, 12.0]))
    assert torch.equal(cls_and_patches(keep_with_prefix(x, keep, 3), 3)[0, :, 0], torch.tensor([0.0, 8.0, 12.0]))
    logits = torch.arange(7 * 7).reshape(1, 1, 7, 7)  # (B, H, N, N): rows and columns alike
    assert cls_and_patches(cls_and_patches(logits, 3, 2), 3, 3)[0, 0, :, 0].tolist() == [0, 21, 28, 35, 42]
    assert cls_and_patches(logits, 1, 2) is logits  # CLS only: nothing to drop
    assert torch.equal(positions_within(torch.tensor([[1, 2, 3, 5]]), torch.tensor([[2, 5]])), torch.tensor([[1, 3]]))
