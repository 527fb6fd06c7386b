"""Fine-tuning with each shipped preset, from the command line, on a tiny image folder."""
import json

import pytest
from PIL import Image
from timm.data import auto_augment

from conftest import TINY, tiny_vit
from hybrid_distill.evaluation import command, finetune
from hybrid_distill.evaluation.augment import posterize
from hybrid_distill.models.load import save_model_file
from test_evaluation import image_folder


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
    data = image_folder(tmp_path / "images")
    argv = ["finetune", str(model_file), "--data", str(data), "--preset", preset, "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert command.main(argv) == 0
    result = json.loads(next((tmp_path / "out").glob("finetune-*.json")).read_text())
    assert result["preset"] == preset and result["steps"] == 2 and 0.0 <= result["top1"] <= 100.0
