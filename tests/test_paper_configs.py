"""Every shipped paper experiment (configs/paper/*.yaml) builds and takes one optimiser step at tiny size."""

from pathlib import Path

import pytest
import torch

from hybrid_distill.config import from_dict, load_config, to_dict
from hybrid_distill.trainer import Trainer

PAPER = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
# an 8 x 8 token grid; 12 blocks as ViT-B, so every block a file names exists (Table 7's middle: 5, 6)
SMALL = dict(img_size=32, patch_size=4, embed_dim=24, depth=12, num_heads=3)


def tiny(values: dict, idx_folder, out) -> dict:
    """The experiment as written, on a small student, random small teachers and Fashion-MNIST."""
    values["student"].update(arch="vit_tiny_patch16_224", model_kwargs=dict(SMALL))
    for teacher in values["teachers"].values():
        teacher.update(arch="vit_tiny_patch16_224", weights="random", model_kwargs=dict(SMALL))
    values["data"].update(dataset="fashion_mnist", path=str(idx_folder), img_size=32, num_workers=0)
    values["optim"].update(batch_size=4, warmup_epochs=0)
    values["train"].update(epochs=1, max_steps=1, progress=False, tensorboard=False, log_every=1)
    values["output_dir"] = str(out)
    return values


def test_the_paper_folder_is_not_empty():
    assert PAPER, "configs/paper/ holds no experiments"


@pytest.mark.parametrize("path", PAPER, ids=[p.name for p in PAPER])
def test_paper_config_takes_one_step_at_tiny_size(path, idx_folder, tmp_path):
    try:
        cfg = from_dict(tiny(to_dict(load_config(path)), idx_folder, tmp_path), where=path.name)
        trainer = Trainer(cfg)
        before = [p.detach().clone() for p in trainer.student.parameters()]
        trainer.fit()
    except Exception as err:  # the file's name first, whatever broke
        pytest.fail(f"{path.name}: {type(err).__name__}: {err}")
    assert trainer.step == 1, path.name
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters())]
    assert any(moved), f"{path.name}: one optimiser step changed no parameter"
