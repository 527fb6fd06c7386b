"""Every shipped experiment (configs/*.yaml, configs/paper/*.yaml) loads, passes the checker and builds its
models at a reduced size; the slow sweep trains one optimiser step per file."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hybrid_distill.build import build_models
from hybrid_distill.config import Config, from_dict, load_config, read_yaml, to_dict
from hybrid_distill.trainer import Trainer

CONFIGS = Path(__file__).parents[1] / "configs"
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))
SHIPPED = sorted(CONFIGS.glob("*.yaml")) + PAPER
# an 8 x 8 token grid at width 24; 8 blocks hold every block a file names (Table 7's middle: 5, 6; its
# four layers: -5 .. -2) and the progressive masking's three selections; the slow sweep keeps ViT-B's 12
SMALL = dict(img_size=32, patch_size=4, embed_dim=24, depth=8, num_heads=3)


def tiny(values: dict, depth: int = 8) -> dict:
    """The experiment as written, on a small student and random small teachers of `depth` blocks."""
    kwargs = {**SMALL, "depth": depth}
    values["student"].update(arch="vit_tiny_patch16_224", model_kwargs=dict(kwargs))
    for teacher in values["teachers"].values():
        teacher.update(arch="vit_tiny_patch16_224", weights="random", model_kwargs=dict(kwargs))
    values["data"].update(img_size=32)
    return values


def as_written(path: Path) -> dict:
    """The file over its `base:` chain and the defaults, typed (unknown keys and wrong types fail), unchecked."""
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config()), read_yaml(path)), enum_to_str=True)


def test_the_paper_folder_is_not_empty():
    assert len(PAPER) >= 71, f"configs/paper/ holds {len(PAPER)} experiments"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_config_is_checked_and_builds_its_models_at_reduced_size(path):
    values = as_written(path)
    assert values["name"] == path.stem, f"{path.name}: name={values['name']} (runs go to runs/NAME)"
    cfg = from_dict(tiny(values), where=path.name)  # the whole checker, block indices included
    student, _, records = build_models(cfg)
    assert len(student.backbone.blocks) == SMALL["depth"], path.name
    assert set(records) == set(cfg.teachers), f"{path.name}: built teachers {sorted(records)}"


@pytest.mark.parametrize(
    "name", ["t1_hybrid_mae_deit", "t1_hybrid_mae_clip", "t11_hybrid_mae_dino", "t1_distill_mae", "t9_fd_deit"]
)
def test_a_config_of_each_teacher_pair_passes_the_checker_at_full_size(name):
    """Its timm names exist and every block it names lies within the real teachers (ViT-B, 12 blocks)."""
    cfg = load_config(CONFIGS / "paper" / f"{name}.yaml")
    assert cfg.name == name


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[p.name for p in PAPER])
def test_paper_config_takes_one_step_at_tiny_size(path, idx_folder, tmp_path):
    values = tiny(to_dict(load_config(path)), depth=12)
    values["data"].update(dataset="fashion_mnist", path=str(idx_folder), num_workers=0)
    values["optim"].update(batch_size=4, warmup_epochs=0)
    values["train"].update(epochs=1, max_steps=1, progress=False, tensorboard=False, log_every=1)
    values["output_dir"] = str(tmp_path)
    try:
        trainer = Trainer(from_dict(values, where=path.name))
        before = [p.detach().clone() for p in trainer.student.parameters()]
        trainer.fit()
    except Exception as err:  # the file's name first, whatever broke
        pytest.fail(f"{path.name}: {type(err).__name__}: {err}")
    assert trainer.step == 1, path.name
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters())]
    assert any(moved), f"{path.name}: one optimiser step changed no parameter"
