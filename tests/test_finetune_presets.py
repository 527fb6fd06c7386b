"""Fine-tuning with each shipped preset, from the command line, on a tiny image folder."""

import json

import pytest
import timm
from conftest import TINY, tiny_vit
from helpers import colour_folder
from PIL import Image
from timm.data import auto_augment

from hybrid_distill import files as ckpt
from hybrid_distill.evaluation import command, finetune
from hybrid_distill.evaluation.augment import posterize
from hybrid_distill.files import save_model_file


def posterize_ops(transform):
    rand_augment = next(t for t in transform.transforms[1].transforms if hasattr(t, "ops"))
    return [op for op in rand_augment.ops if op.name.startswith("Posterize")]


def test_randaugment_posterize_at_full_magnitude_gives_black():
    # magnitude 10 of PosterizeIncreasing keeps 0 bits: Pillow 13's ImageOps.posterize raises on it
    tf = finetune.train_transform(tiny_vit(), finetune.make_config("imagenet"))
    ops = posterize_ops(tf)
    assert ops, "the imagenet preset's RandAugment has a posterize op"
    image = Image.new("RGB", (8, 8), color=(200, 100, 50))
    for op in ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        assert op(image).getextrema() == ((0, 0),) * 3
    assert posterize(image, 8) is image and posterize(image, 2).getpixel((0, 0)) == (192, 64, 0)


def test_timm_posterize_is_what_we_replace():
    # the patch keys on timm's function object: if timm renames it, this fails instead of a silent no-op
    assert auto_augment.NAME_TO_OP["PosterizeIncreasing"] is auto_augment.posterize


@pytest.mark.parametrize("preset", sorted(finetune.PRESETS))
def test_eval_finetune_one_epoch_with_each_preset(tmp_path, preset):
    model_file = save_model_file(tiny_vit(), "vit_tiny_patch16_224", TINY, tmp_path / "model.pt")
    data = colour_folder(tmp_path / "images")
    argv = [
        "finetune",
        str(model_file),
        "--data",
        str(data),
        "--preset",
        preset,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
    ]
    assert command.main(argv) == 0
    result = json.loads(next((tmp_path / "out").glob("finetune-*.json")).read_text())
    assert result["preset"] == preset and result["steps"] == 2 and result["top5"] == 100.0  # 2 classes
    # each class one solid colour, so one prediction per class: top-1 is 0, 50 or 100
    assert round(result["top1"], 4) in (0.0, 50.0, 100.0) and (preset != "fashion_mnist" or result["top1"] == 100.0)
    assert [e["epoch"] for e in result["epochs"]] == [1] and result["epochs"][0]["test_top1"] == result["top1"]
    tuned = timm.create_model(f"local-dir:{result['weights']}", pretrained=True)  # the fine-tuned weights
    assert tuned.num_classes == 2 and result["source"]["sha256"] and result["source"]["step"] is None


def test_short_runs_scale_the_warmup_down():
    assert finetune.make_config("imagenet", epochs=10).warmup_epochs == pytest.approx(0.5)  # 5 of 100 -> 0.5 of 10
    assert finetune.make_config("imagenet", epochs=10, warmup_epochs=2).warmup_epochs == 2
    assert finetune.make_config("imagenet", epochs=200).warmup_epochs == 5  # longer runs keep the preset's


def test_eval_json_names_the_checkpoint_and_each_step_gets_its_own_file(tmp_path):
    run = tmp_path / "run"
    student = tiny_vit()
    config = {"student": {"arch": "vit_tiny_patch16_224", "model_kwargs": TINY, "mean": [0.5] * 3, "std": [0.5] * 3}}
    for step in (5, 9):
        ckpt.save_checkpoint(
            ckpt.checkpoint_path(run, step),
            {"model": {f"backbone.{k}": v for k, v in student.state_dict().items()}, "step": step, "config": config},
        )
    data = colour_folder(tmp_path / "images")
    assert command.main(["knn", str(run), "--data", str(data), "--k", "3", "--no-cache"]) == 0
    newest = json.loads((run / "eval" / "knn-images-cls-step00000009.json").read_text())
    assert newest["source"]["step"] == 9 and newest["source"]["path"].endswith("checkpoint-00000009.pt")
    assert newest["source"]["sha256"] == ckpt.sha256_file(ckpt.checkpoint_path(run, 9))
    older = ckpt.checkpoint_path(run, 5)
    assert (
        command.main(["knn", str(older), "--data", str(data), "--k", "3", "--no-cache", "--out", str(run / "eval")])
        == 0
    )
    assert sorted(p.name for p in (run / "eval").glob("knn-*.json")) == [
        "knn-images-cls-step00000005.json",
        "knn-images-cls-step00000009.json",
    ]
