"""Evaluation that reaches paper Tables 1 and 2: official weight files, timm names with and without
--pretrained (offline: one line naming `teachers prefetch`), MAE-style average pooling and layer
decay, dBOT's recipe for CIFAR-100 / Cars / iNat19 and torchvision's readers for them."""

import argparse
import json
import subprocess
import sys
import time

import pytest
import timm
import torch
from helpers import colour_folder, solid_images
from PIL import Image

from hybrid_distill.evaluation import command, finetune
from hybrid_distill.evaluation.datasets import torchvision_data
from hybrid_distill.evaluation.finetune_parts import mae_param_groups, repeated_sampler
from hybrid_distill.evaluation.loading import load_eval_model

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


def small_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, **SMALL)


@pytest.mark.slow  # default suite: test_weights.py's offline tests, in-process
def test_offline_pretrained_timm_name_fails_in_one_line_naming_prefetch(tmp_path):
    data = colour_folder(tmp_path / "images", n_per_class=3)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_cache"), "PATH": "/usr/bin:/bin"}
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybrid_distill.cli",
            "eval",
            "knn",
            "vit_base_patch16_224.mae",
            "--pretrained",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2 and time.monotonic() - start < 60
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hybrid-distill teachers prefetch vit_base_patch16_224.mae" in lines[0], result.stderr


def test_a_legacy_pickled_official_file_without_arch_gets_the_arch_hint(tmp_path):
    """Official checkpoints saved before torch's zip layout cannot be memory-mapped: read whole, then named."""
    from hybrid_distill.evaluation.loading import check_model_file

    file = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), file, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"not a hybrid-distill file.*--arch"):
        check_model_file(str(file))


def test_a_timm_name_without_pretrained_says_its_weights_are_random():
    said = []
    load_eval_model("vit_tiny_patch16_224", warn=said.append, **SMALL)
    assert len(said) == 1 and "RANDOM weights" in said[0] and "--pretrained" in said[0]


def test_an_official_mae_file_is_evaluated_with_its_weights(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    file = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": model.state_dict()}, file)  # MAE's layout: {'model': encoder}
    loaded = load_eval_model(str(file), arch="vit_tiny_patch16_224")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"not a hybrid-distill file.*--arch"):
        load_eval_model(str(file))
    data = colour_folder(tmp_path / "images", n_per_class=3)
    assert command.main(["knn", str(file), "--arch", "vit_tiny_patch16_224", "--data", str(data), "--k", "2"]) == 0
    written = list((tmp_path / "eval").glob("knn-images-cls*.json"))  # named per weight file (its SHA-256)
    assert len(written) == 1 and json.loads(written[0].read_text())["top1"] == 100.0


def test_an_official_file_its_arch_cannot_read_ends_in_one_line_exit_2(tmp_path, capsys):
    from hybrid_distill import cli

    file = tmp_path / "tensors.pth"
    torch.save([torch.zeros(3)], file)  # a list, not a state dict
    data = str(colour_folder(tmp_path / "images", n_per_class=2))
    assert cli.main(["eval", "knn", str(file), "--arch", "vit_tiny_patch16_224", "--data", data]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"hybrid-distill eval: error: --arch vit_tiny_patch16_224: {file}: expected a dict of tensors, got list"
    ]


def test_the_source_of_an_official_training_checkpoint_has_no_step(tmp_path):
    from hybrid_distill.evaluation.source import model_source

    file = tmp_path / "checkpoint-799.pth"  # MAE's training checkpoints carry their argparse arguments
    torch.save({"model": small_vit().state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 799}, file)
    assert model_source(str(file))["step"] is None


def test_global_average_pool_is_the_patch_token_mean_through_a_fresh_fc_norm():
    model = finetune.prepare_model(small_vit(), num_classes=3, drop_path=0.0, global_pool="avg").eval()
    assert isinstance(model.norm, torch.nn.Identity) and model.fc_norm.weight.eq(1).all()
    images = torch.rand(2, 3, 16, 16)
    x = model.blocks(model._pos_embed(model.patch_embed(images)))
    assert torch.allclose(model(images), model.head(model.fc_norm(x[:, 1:].mean(dim=1))), atol=1e-5)


def test_mae_layer_decay_keeps_fc_norm_and_head_at_full_lr_and_none_means_one_lr():
    model = finetune.prepare_model(small_vit(), num_classes=3, drop_path=0.0, global_pool="avg")
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in mae_param_groups(model, 0.05, 0.5) for p in g["params"]}
    assert scale["fc_norm.weight"] == scale["head.weight"] == 1.0 and scale["blocks.3.mlp.fc1.weight"] == 0.5
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == 0.5**5
    assert {g["lr_scale"] for g in mae_param_groups(model, 0.05, None)} == {1.0}


def test_dbot_recipe_presets_for_the_small_sets():
    cifar, inat = finetune.make_config("cifar100"), finetune.make_config("inat19")
    assert (cifar.epochs, inat.epochs, inat.re_prob, cifar.global_pool, cifar.layer_decay) == (
        1000,
        360,
        0.1,
        "token",
        None,
    )
    assert cifar.lr * cifar.batch_size * 8 / cifar.ref_batch == pytest.approx(7.5e-6 * 768 / 512)  # 8 GPUs
    assert finetune.make_config("imagenet").global_pool == "avg"


def test_the_cifar100_recipe_runs_with_ema_and_repeated_augmentation():
    result = finetune.finetune_eval(
        small_vit(),
        solid_images(32),
        solid_images(10),
        "cifar100",
        batch_size=8,
        epochs=1,
        warmup_epochs=0.5,
        num_workers=0,
    )
    assert result["steps"] == 32 // 8  # the epoch keeps the dataset's length (DeiT / dBOT RASampler)
    # the EMA is scored as the model is: 3 classes put every label in the top 5; 10 images of 3 solid
    # colours, each colour one prediction, give top-1 of 0, 30, 40, 60, 70 or 100 (classes of 4, 3, 3 images)
    assert result["ema_top5"] == result["top5"] == 100.0
    assert {round(result["ema_top1"], 4), round(result["top1"], 4)} <= {0.0, 30.0, 40.0, 60.0, 70.0, 100.0}


def test_inat19_is_torchvisions_reader_split_by_the_official_val_list(tmp_path):
    for cat, files in (("0", ["a", "b"]), ("1", ["c", "d"])):
        folder = tmp_path / "2019" / "Plants" / cat
        folder.mkdir(parents=True)
        for f in files:
            Image.new("RGB", (8, 8)).save(folder / f"{f}.jpg")
    val = {"images": [{"file_name": "train_val2019/Plants/0/b.jpg"}, {"file_name": "train_val2019/Plants/1/c.jpg"}]}
    (tmp_path / "val2019.json").write_text(json.dumps(val))
    train, test, info = torchvision_data("inat19", str(tmp_path))
    assert len(train) == len(test) == 2 and len(train.classes) == 2 and info["crop_pct"] == 0.875
    assert sorted(label for _, label in test) == [0, 1]


def test_a_missing_torchvision_dataset_fails_in_one_line(tmp_path):
    for name in ("cifar100", "cars"):
        with pytest.raises(FileNotFoundError, match=rf"^--data {name}:") as err:
            command.load_data(f"{name}:{tmp_path}")
        assert "\n" not in str(err.value)


def test_repeated_augmentation_shows_each_chosen_image_three_times():
    order = list(iter(repeated_sampler(list(range(32)), 3, rank=0, world=1, batch_size=8)))
    counts = sorted(order.count(i) for i in set(order))  # 32 = 10 images x 3 + 2 repeats of an 11th
    assert len(order) == 32 and counts == [2] + [3] * 10 and order[0] == order[1] == order[2]
