"""What the locality study rests on: disjoint image sets, the controlled teacher, the MIM teacher's curve."""

import json

import pytest
import torch
from test_study import tiny_study

from hybrid_distill.analysis.metrics import uniform_distance
from hybrid_distill.data.subset import limit_indices
from hybrid_distill.models.load import create_vit
from hybrid_distill.study import StudyError, load_study, splits
from hybrid_distill.study.controlled import make_controlled
from hybrid_distill.study.curve import head_distances
from hybrid_distill.study.spec import base_config

SHIPPED = [
    "configs/studies/fashion_mnist_196.yaml",
    "configs/studies/locality.yaml",
    "configs/studies/fashion_mnist_49.yaml",
]
TRAIN = 60000  # Fashion-MNIST's train split


@pytest.mark.parametrize("path", SHIPPED)
def test_gate_queries_are_disjoint_from_every_trained_set_as_documented(path):
    spec = load_study(path)
    base, ev = base_config(spec), spec.evaluate
    students = set(limit_indices(TRAIN, base.data.limit))  # what data.limit trains the students on
    bank = set(splits.first(TRAIN, ev.train_images))
    gate = set(splits.last(TRAIN, ev.heldout_images))
    assert len(gate) == ev.heldout_images and bank == students  # the bank is the students' own images
    for name, t in spec.teachers.items():
        teacher = set(splits.first(TRAIN, t.images or base.data.limit))
        assert students <= teacher  # students distil on images their teachers saw (documented in splits.py)
        assert not teacher & gate and set(splits.last(TRAIN, t.curve_images)) <= gate, name
    assert not students & gate and not bank & gate


def test_a_study_whose_held_out_images_would_be_trained_on_is_refused():
    with pytest.raises(StudyError, match="teachers.sup.images: 55000 training images \\+ 10000 held out exceed"):
        splits.check_disjoint(TRAIN, {"teachers.sup.images": 55000}, 10000)
    splits.check_disjoint(TRAIN, {"teachers.sup.images": 50000}, 10000)


class Indexed(torch.utils.data.Dataset):
    """Images whose label is their index in the split: the gate's k-NN shows which images it read."""

    def __init__(self, n: int):
        from PIL import Image

        self.n, self.image = n, Image.new("L", (28, 28))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.image, i


def test_the_teacher_gate_reads_the_teachers_images_as_bank_and_the_held_out_end_as_queries(monkeypatch):
    from hybrid_distill.study import teachers as module

    seen = []
    monkeypatch.setattr(
        module, "knn_classify", lambda bf, bl, qf, ql: seen.append((bl.tolist(), ql.tolist())) or {"top1": 0.0}
    )
    model = create_vit("vit_tiny_patch16_224", img_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2)
    module.heldout_check(model, Indexed(40), n_bank=24, n_heldout=10, side=28)
    for bank, queries in seen:  # the model's features, then raw pixels: the same images each time
        assert sorted(bank) == splits.first(40, 24) and sorted(queries) == splits.last(40, 10)
        assert not set(bank) & set(queries)


def test_controlled_heads_attend_as_their_betas_say():
    encoder = create_vit("vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=64, depth=2, num_heads=4)
    make_controlled(encoder, [4.0, 1.0, 0.0, -1.0])
    images = torch.randn(8, 3, 28, 28)
    ratio = torch.tensor(head_distances(encoder, images)) / uniform_distance((7, 7), (4, 4))  # (layers, H)
    assert (ratio[:, 0] < 0.4).all() and (ratio[:, 0] < ratio[:, 1]).all() and (ratio[:, 1] < 0.8).all()
    assert torch.allclose(ratio[:, 2], torch.ones(2), atol=1e-4)  # beta 0: uniform attention exactly
    assert (ratio[:, 3] > 1.2).all()  # beta < 0: the farthest patches
    with pytest.raises(ValueError, match="one beta per head"):
        make_controlled(encoder, [1.0, 2.0])


def test_controlled_relation_is_eq2_of_the_sincos_kernel():
    """R_h = Q K^T (eq. 2) of head h is beta_h times the 2-D cosine kernel of patch positions (controlled.py's
    formula), up to LayerNorm's centring: correlation above 0.8 for every beta != 0, exactly 0 for beta 0."""
    from hybrid_distill.models.attention import attention_logits
    from hybrid_distill.models.tokens import embed_tokens
    from hybrid_distill.study.controlled import FREQS

    encoder = make_controlled(
        create_vit("vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=64, depth=1, num_heads=4),
        [2.0, 0.5, 0.0, -1.0],
    )
    block = encoder.blocks[0]
    x = block.norm1(embed_tokens(encoder, torch.randn(2, 3, 28, 28)))  # (B, N, D)
    raw = (attention_logits(block.attn, x) / block.attn.scale)[:, :, 1:, 1:]  # (B, H, L, L) patches
    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    y, x_ = rows.flatten(), cols.flatten()
    omega = torch.tensor([10000 ** (-k / 16) for k in FREQS])  # sincos_1d at width 32: 10000^(-2i/32)
    kernel = sum(torch.cos(w * (x_[:, None] - x_[None])) + torch.cos(w * (y[:, None] - y[None])) for w in omega)
    for h, beta in enumerate([2.0, 0.5, 0.0, -1.0]):
        if beta == 0:
            assert raw[:, h].abs().max() == 0
            continue
        r = torch.corrcoef(torch.stack([raw[:, h].mean(0).flatten(), kernel.flatten()]))[0, 1]
        assert r * (1 if beta > 0 else -1) > 0.8, (h, float(r))


def test_controlled_betas_may_differ_per_block():
    encoder = create_vit("vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=64, depth=2, num_heads=4)
    make_controlled(encoder, [[4.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 4.0]])
    ratio = torch.tensor(head_distances(encoder, torch.randn(8, 3, 28, 28))) / uniform_distance((7, 7), (4, 4))
    assert ratio[0].argsort().tolist() == [0, 1, 2, 3] and ratio[1].argsort().tolist() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="one per block"):
        make_controlled(encoder, [[1.0] * 4])


def tiny_mae_study(idx_folder, out):
    study = tiny_study(idx_folder, out)
    study["teachers"]["mae"].update(epochs=3, curve_every=1, curve_images=8)
    study["evaluate"]["heldout_images"] = 16
    return load_study(study)


def test_an_interrupted_mae_teacher_resumes_to_the_same_weights_and_curve(idx_folder, tmp_path, monkeypatch):
    from hybrid_distill.study import curve
    from hybrid_distill.study.teachers import build_teacher

    whole = tiny_mae_study(idx_folder, tmp_path / "whole")
    reference = torch.load(build_teacher(whole, "mae", base_config(whole), log=lambda _: None), weights_only=True)
    spec = tiny_mae_study(idx_folder, tmp_path / "cut")
    real_point = curve.point

    def stop_after_epoch_2(encoder, images, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # killed while recording epoch 2: its state is not saved yet
        return real_point(encoder, images, epoch)

    monkeypatch.setattr(curve, "point", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        build_teacher(spec, "mae", base_config(spec), log=lambda _: None)
    monkeypatch.setattr(curve, "point", real_point)
    resumed = torch.load(build_teacher(spec, "mae", base_config(spec), log=lambda _: None), weights_only=True)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)
    curves = [json.loads((tmp_path / d / "teachers" / "mae.curve.json").read_text()) for d in ("whole", "cut")]
    assert [e["epoch"] for e in curves[1]] == [0, 1, 2, 3] and curves[0] == curves[1]
    assert len(curves[0][-1]["per_head"]) == 3 and curves[0][-1]["uniform"] == pytest.approx(
        uniform_distance((4, 4), (7, 7))
    )


def test_publish_copies_and_draws_a_teachers_curve_before_any_cell(tmp_path, monkeypatch):
    from hybrid_distill.study.publish import publish

    monkeypatch.chdir(tmp_path)
    spec = load_study(
        {
            "name": "s",
            "out": "runs/s",
            "rows": {"a": {}},
            "teachers": {"mae": {"kind": "mae", "curve_every": 5, "epochs": 10}},
            "publish": {"dir": "docs/s"},
        }
    )
    curve = [
        {"epoch": e, "uniform": 10.0, "per_head": [[10.0, 9.0], [8.0, 5.0 + e / 10]], "min_ratio": 0.5}
        for e in (0, 5, 10)
    ]
    (tmp_path / "runs/s/teachers").mkdir(parents=True)
    (tmp_path / "runs/s/teachers/mae.curve.json").write_text(json.dumps(curve))
    assert publish(spec, log=lambda _: None) == {}  # no report yet: the curve alone
    assert json.loads((tmp_path / "docs/s/teachers/mae.curve.json").read_text()) == curve
    assert (tmp_path / "docs/s/mae_curve.png").stat().st_size > 1000
    spec.teachers.mae.curve_every = 0
    (tmp_path / "docs/s/mae_curve.png").unlink()
    with pytest.raises(StudyError, match="nothing to publish"):
        publish(spec, log=lambda _: None)
