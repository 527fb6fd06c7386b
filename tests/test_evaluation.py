"""Evaluation: k-NN reference values, linear probe without test leakage, layer decay, features, CLI."""

import json
import math
import os
import subprocess
import sys
from functools import partial

import conftest
import pytest
import torch
import torch.nn.functional as F
from helpers import colour_folder, solid_images
from PIL import Image
from torchvision.datasets import FakeData

from hybrid_distill.evaluation import command, features, finetune, knn, linear
from hybrid_distill.files import save_model_file

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


tiny_vit = partial(conftest.tiny_vit, **TINY)


def fake_images(n, classes=3, size=16, seed=0):
    """(PIL RGB image, int label) pairs, like ImageFolder."""
    return FakeData(size=n, image_size=(3, size, size), num_classes=classes, random_offset=seed)


class Counting(torch.utils.data.Dataset):
    """Counts reads; appends `name` to `log` on its first read."""

    def __init__(self, dataset, name, log):
        self.dataset, self.name, self.log, self.reads = dataset, name, log, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if self.reads == 0:
            self.log.append(self.name)
        self.reads += 1
        return self.dataset[i]


# ---------------------------------------------------------------- k-NN


def test_knn_hand_computed_votes_depend_on_temperature():
    # query (1, 0); neighbours: (1, 0) class 0 with sim 1.0; (0.6, 0.8) and (0.8, -0.6) class 1 with sims 0.6, 0.8
    train = torch.tensor([[3.0, 0.0], [0.6, 0.8], [0.8, -0.6]])  # row 0 not unit norm: k-NN must normalise
    labels = torch.tensor([0, 1, 1])
    query, target = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    scores = knn.knn_scores(F.normalize(train, dim=1), labels, query, k=3, temperature=1.0, num_classes=2)
    torch.testing.assert_close(scores, torch.tensor([[math.exp(1.0), math.exp(0.6) + math.exp(0.8)]]))
    # T = 1: 2.718 < 1.822 + 2.226, class 1 wins; T = 0.07: e^14.3 > e^8.6 + e^11.4, class 0 wins
    assert knn.knn_classify(train, labels, query, target, k=3, temperature=1.0)["top1"] == 100.0
    assert knn.knn_classify(train, labels, query, target, k=3, temperature=0.07)["top1"] == 0.0
    # k = 1 keeps only the nearest (class 0); top-5 covers both classes
    result = knn.knn_classify(train, labels, query, target, k=1, temperature=1.0)
    assert result == {"top1": 0.0, "top5": 100.0}


def test_knn_chunks_and_top5():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=gen), torch.randn(13, 8, generator=gen)
    train_labels, test_labels = torch.randint(0, 7, (50,), generator=gen), torch.randint(0, 7, (13,), generator=gen)
    whole = knn.knn_classify(train, train_labels, test, test_labels, chunk_size=1000)
    assert knn.knn_classify(train, train_labels, test, test_labels, chunk_size=4) == whole
    # top-5 from the formula, one query at a time
    hits = 0
    for q, y in zip(F.normalize(test, dim=1), test_labels):
        sim = F.normalize(train, dim=1) @ q
        top = sim.topk(20)
        votes = torch.zeros(7).index_add_(0, train_labels[top.indices], (top.values / 0.07).exp())
        hits += int(y in votes.topk(5).indices)
    assert whole["top5"] == pytest.approx(100.0 * hits / 13)


def test_knn_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same D"):
        knn.knn_classify(
            torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(2, 5), torch.zeros(2, dtype=torch.long)
        )


# ---------------------------------------------------------------- linear probe


def separable(n, classes=4, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = 3.0 * torch.eye(classes, dim)
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=gen), labels


def test_linear_probe_separable_reaches_100():
    train_feats, train_labels = separable(400)
    test = separable(200, seed=1)
    cfg = linear.ProbeConfig(lrs=(1e-6, 0.1), weight_decays=(0.0,), epochs=5, batch_size=64)
    result = linear.linear_probe(train_feats, train_labels, lambda: test, cfg=cfg)
    assert result["top1"] == 100.0
    assert result["chosen"]["lr"] == 0.1  # lr 1e-6 cannot move a head initialised at std 0.01
    assert [g["lr"] for g in result["chosen"]["grid"]] == [1e-6, 0.1]


def test_linear_probe_choice_ignores_test_labels():
    train_feats, train_labels = separable(400)
    test_feats, test_labels = separable(200, seed=1)
    cfg = linear.ProbeConfig(lrs=(1e-3, 1e-2, 0.1), weight_decays=(0.0, 1e-3), epochs=2, batch_size=64)
    honest = linear.linear_probe(train_feats, train_labels, lambda: (test_feats, test_labels), cfg=cfg)
    scrambled = linear.linear_probe(train_feats, train_labels, lambda: (test_feats, test_labels.roll(1)), cfg=cfg)
    assert honest["chosen"] == scrambled["chosen"]
    assert scrambled["top1"] == 0.0 and honest["top1"] == 100.0


def test_heads_train_independently():
    """A head trained with others in one pass ends where it ends when its neighbours have lr 0."""
    feats, labels = separable(128)
    cfg = linear.ProbeConfig(epochs=2, batch_size=32)
    together = linear.train_heads(feats, labels, [(0.1, 0.0), (0.3, 1e-3)], 4, cfg)
    alone = linear.train_heads(feats, labels, [(0.1, 0.0), (0.0, 0.0)], 4, cfg)
    torch.testing.assert_close(together[0].head.weight, alone[0].head.weight)
    assert not torch.allclose(together[1].head.weight, alone[1].head.weight)


def test_linear_eval_reads_test_split_once_after_selection(monkeypatch):
    log = []
    select = linear.select_setting

    def logged_select(*args, **kwargs):
        out = select(*args, **kwargs)
        log.append("selected")
        return out

    monkeypatch.setattr(linear, "select_setting", logged_select)
    train = Counting(solid_images(40), "train-read", log)
    test = Counting(solid_images(12), "test-read", log)
    cfg = linear.ProbeConfig(lrs=(0.01, 0.1), weight_decays=(0.0,), epochs=1, batch_size=16)
    result = linear.linear_eval(tiny_vit(), train, test, cfg=cfg, batch_size=8)
    assert log == ["train-read", "selected", "test-read"]
    assert train.reads == 40 and test.reads == 12  # every sample once, no second pass
    assert result["protocol"] == "linear" and result["top1"] == 100.0  # three solid colours: separable


def test_holdout_split_is_seeded_and_disjoint():
    fit, val = linear.holdout_split(100, 0.1, seed=3)
    assert len(val) == 10 and len(fit) == 90 and not set(fit.tolist()) & set(val.tolist())
    torch.testing.assert_close(linear.holdout_split(100, 0.1, seed=3)[1], val)
    with pytest.raises(ValueError, match="fraction"):
        linear.holdout_split(100, 1.5, seed=0)


# ---------------------------------------------------------------- fine-tuning


def test_layer_decay_groups():
    depth, decay = TINY["depth"], 0.65
    model = finetune.prepare_model(tiny_vit(), num_classes=5, drop_path=0.1)
    opt = finetune.make_optimizer(model, finetune.make_config("imagenet"), lr=1.0)
    scale, wd = {}, {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            scale[names[id(p)]], wd[names[id(p)]] = group["lr_scale"], group["weight_decay"]
    assert len(scale) == len(names)
    for name, s in scale.items():
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            assert s == pytest.approx(decay ** (depth - i)), name
        elif name.split(".")[0] in {"patch_embed", "cls_token", "pos_embed"}:
            assert s == pytest.approx(decay ** (depth + 1)), name
        elif name.startswith("head."):
            assert s == 1.0, name
        else:  # MAE util/lr_decay.py: the final norm is after the blocks, at the full lr
            assert name.startswith("norm.") and s == 1.0, name
    assert wd["blocks.0.attn.qkv.weight"] == 0.05 and wd["head.weight"] == 0.05
    assert wd["pos_embed"] == wd["cls_token"] == wd["blocks.0.norm1.weight"] == wd["head.bias"] == 0.0


def test_scheduler_applies_layer_scale_with_warmup_and_cosine():
    model = finetune.prepare_model(tiny_vit(), num_classes=5, drop_path=0.0)
    cfg = finetune.make_config("imagenet", epochs=4, warmup_epochs=1, min_lr=0.0)
    opt = finetune.make_optimizer(model, cfg, lr=1.0)
    sched = finetune.make_scheduler(opt, cfg, steps_per_epoch=10)  # 10 warmup + 30 cosine steps
    expected = {5: 0.5, 10: 1.0, 25: 0.5 * (1 + math.cos(math.pi * 15 / 30)), 40: 0.0}
    for step, lr in expected.items():
        sched.step_update(step)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(lr * group["lr_scale"], abs=1e-12)


def test_drop_path_rises_linearly():
    model = finetune.set_drop_path(tiny_vit(), 0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("name", ["fashion_mnist", "imagenet"])
def test_finetune_runs_and_leaves_backbone_untouched(name):
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune.finetune_eval(
        model,
        solid_images(32),
        solid_images(10),
        name,
        batch_size=8,
        epochs=1,
        warmup_epochs=0.5,
        train_subset=None,
        num_workers=0,
    )
    assert result["steps"] == 4 and math.isfinite(result["train_loss"])
    assert result["num_classes"] == 3 and result["top5"] == 100.0  # 3 classes: every label is in the top 5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if name == "fashion_mnist":  # seeded: crops, flips, shuffling and head init repeat exactly
        assert result["top1"] == 100.0  # three solid colours, learnt in 4 steps at this preset's lr
        again = finetune.finetune_eval(
            model,
            solid_images(32),
            solid_images(10),
            name,
            batch_size=8,
            epochs=1,
            warmup_epochs=0.5,
            train_subset=None,
            num_workers=0,
        )
        assert again["train_loss"] == result["train_loss"]


@pytest.mark.parametrize("every, scored", [(1, [1, 2, 3]), (2, [2, 3]), (0, [3])])
def test_eval_every_scores_those_epochs_and_always_the_last(every, scored):
    result = finetune.finetune_eval(
        tiny_vit(),
        fake_images(16),
        fake_images(6, seed=50),
        "fashion_mnist",
        batch_size=8,
        epochs=3,
        train_subset=None,
        num_workers=0,
        eval_every=every,
    )
    assert [e["epoch"] for e in result["epochs"] if "test_top1" in e] == scored
    assert result["top1"] == result["epochs"][-1]["test_top1"] and len(result["epochs"]) == 3


def test_scoring_mid_training_leaves_the_training_as_it_was():
    # the test split's DataLoader draws its seed from torch's generator, which the training's flips use too
    runs = [
        finetune.finetune_eval(
            tiny_vit(),
            fake_images(16),
            fake_images(6, seed=50),
            "fashion_mnist",
            batch_size=8,
            epochs=3,
            train_subset=None,
            num_workers=0,
            eval_every=every,
        )
        for every in (1, 0)
    ]
    assert runs[0]["train_loss"] == runs[1]["train_loss"] and runs[0]["top1"] == runs[1]["top1"]


@pytest.mark.parametrize("field, value", [("eval_every", -1), ("eval_every", 1.5), ("epochs", 0)])
def test_bad_finetune_numbers_are_refused_in_one_line(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a whole number"):
        finetune.make_config("fashion_mnist", **{field: value})
    with pytest.raises(ValueError, match=f"{field} must be a whole number"):
        finetune.FinetuneConfig(**{field: value})


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="fashion_mnist"):
        finetune.make_config("cifar")


# ---------------------------------------------------------------- features


def test_features_match_forward_features_and_pool():
    model, data = tiny_vit().eval(), fake_images(10)
    tf = features.eval_transform(model)
    images = torch.stack([tf(data[i][0]) for i in range(10)])
    with torch.no_grad():
        tokens = model.forward_features(images)  # (B, N, D)
    for pool, want in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1))):
        # on the CPU like the reference: on CUDA the patch convolution runs in TF32 (cudnn's default)
        feats, labels = features.extract_features(model, data, pool=pool, batch_size=4, device="cpu")
        torch.testing.assert_close(feats, want)
    assert labels.tolist() == [data[i][1] for i in range(10)]


def test_grayscale_images_become_rgb():
    model = tiny_vit()
    gray = [(Image.new("L", (28, 28), color=128), 0)]
    feats, _ = features.extract_features(model, gray)
    assert feats.shape == (1, TINY["embed_dim"])


def test_feature_cache_hit_skips_the_dataset(tmp_path):
    model, log = tiny_vit(), []
    data = Counting(fake_images(6), "read", log)
    first = features.extract_features(model, data, cache_dir=tmp_path, data_key="fake")
    second = features.extract_features(model, data, cache_dir=tmp_path, data_key="fake")
    assert data.reads == 6 and torch.equal(first[0], second[0])
    features.extract_features(model, data, pool="mean", cache_dir=tmp_path, data_key="fake")
    with torch.no_grad():
        model.cls_token.add_(1.0)  # other weights: other key
    features.extract_features(model, data, cache_dir=tmp_path, data_key="fake")
    assert data.reads == 18 and len(list(tmp_path.glob("features-*.pt"))) == 3


def _gather_worker(rank, world, port, total, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    local = torch.arange(total, dtype=torch.float32)[rank::world].view(-1, 1).repeat(1, 2)  # rows rank::world
    # a list, not a tensor: a tensor travels by a file descriptor this process must outlive (flaky)
    queue.put((rank, features.gather_strided(local, total).tolist()))
    dist.destroy_process_group()


def test_gather_strided_uneven_shards_across_two_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the ranks need no fresh interpreter importing torch
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, 5, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    want = torch.arange(5, dtype=torch.float32).view(-1, 1).repeat(1, 2)
    for rank in range(2):
        torch.testing.assert_close(torch.tensor(results[rank]), want)


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_finetune_under_torchrun_two_processes(tmp_path):
    # DDP on gloo: each rank takes half of every epoch (DistributedSampler), lr scaled by the world size,
    # rank 0 alone writes the result after the test features are gathered from both ranks
    model_file = save_model_file(tiny_vit(), "vit_tiny_patch16_224", TINY, tmp_path / "model.pt")
    data = colour_folder(tmp_path / "images", n_per_class=8)  # 16 training images
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29537",
        "-m",
        "hybrid_distill.cli",
        "eval",
        "finetune",
        str(model_file),
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(
        argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = list((tmp_path / "out").glob("finetune-*.json"))
    assert len(written) == 1 and result.stdout.count("finetune: top1 ") == 1
    out = json.loads(written[0].read_text())
    assert out["steps"] == 2 * 16 // (4 * 2)  # 2 epochs of 16 images, batch 4 on each of 2 ranks
    assert out["lr"] == pytest.approx(out["config"]["lr"] * 4 * 2 / out["config"]["ref_batch"])
    assert out["top5"] == 100.0 and math.isfinite(out["train_loss"])  # 2 classes: every label is in the top 5


def test_command_knn_and_linear_write_json(tmp_path):
    model = tiny_vit()
    model_file = save_model_file(model, "vit_tiny_patch16_224", TINY, tmp_path / "model.pt")
    data = colour_folder(tmp_path / "images")
    assert command.main(["knn", str(model_file), "--data", str(data), "--k", "3"]) == 0
    result = json.loads(next((tmp_path / "eval").glob("knn-images-cls-sha*.json")).read_text())
    assert result["protocol"] == "knn" and result["config"]["k"] == 3
    assert result["top1"] == 100.0  # two solid colours: identical features within a class
    assert "git_sha" in result["provenance"] and result["model"] == str(model_file)
    assert len(list((tmp_path / "eval" / "features").glob("*.pt"))) == 2
    out = tmp_path / "results"
    assert (
        command.main(
            ["linear", str(model_file), "--data", str(data), "--out", str(out), "--epochs", "2", "--pool", "mean"]
        )
        == 0
    )
    result = json.loads(next(out.glob("linear-images-mean-sha*.json")).read_text())
    assert result["protocol"] == "linear" and result["config"]["pool"] == "mean" and "chosen" in result


def test_command_rejects_bad_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        command.main(["knn", "vit_tiny_patch16_224", "--data", str(tmp_path)])


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST not installed")
def test_fashion_mnist_spec():
    train, test, info = command.load_data("fashion_mnist")
    assert (len(train), len(test), info["crop_pct"]) == (60000, 10000, 1.0)
