"""Regression: a tiny seeded two-teacher step gives the values recorded in tests/data/regression_step.npz.

The recording was made before the teacher-side refactor, from commit 50ba136, with

    .venv/bin/python tests/test_regression.py

(progressive masking over 64 patches, fp32, no drop path). Keys name the resolved block index
('mim/rel4', not 'mim/rel-2'): the recording mapped the names of that commit to them. Indices
must be equal; fp32 tensors within torch.testing's fp32 defaults (1e-5 absolute, 1.3e-6 relative): the
recording was made on an Intel Xeon, and an AMD EPYC's BLAS sums in another order (1.6e-6 apart on the
relation logits, git 03fccbf); a changed computation moves these values by far more.
"""

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_vit

from hybrid_distill.build import build_models
from hybrid_distill.config import from_dict
from hybrid_distill.engine import build_optimizer, train_step
from hybrid_distill.runtime import RunContext

RECORDING = Path(__file__).parent / "data" / "regression_step.npz"
TEACHER = dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=4)
STUDENT = dict(img_size=32, patch_size=4, embed_dim=32, depth=6, num_heads=4)


def regression_config():
    teacher = {"arch": "vit_tiny_patch16_224", "weights": "random", "model_kwargs": dict(TEACHER)}
    return from_dict(
        {
            "seed": 0,
            "data": {"dataset": "synthetic", "img_size": 32},
            "student": {"arch": "vit_tiny_patch16_224", "model_kwargs": dict(STUDENT), "drop_path": 0.0},
            "teachers": {
                "sup": {**teacher, "features": True},
                # the recording's relation form (the default then)
                "mim": {**teacher, "relation_blocks": [-3, -2], "weight": 0.5, "relation_kind": "scaled"},
            },
            "masking": {"teacher": "mim", "strategy": "progressive", "prune_teacher": False},
            "optim": {"batch_size": 4},
            "train": {"amp": "none", "device": "cpu"},
        }
    )


def seeded_timm(kwargs: dict, seed: int) -> dict:
    """timm's own initialisation under a fixed seed (the weights do not depend on build order), with
    the q and k projections scaled up so that relations are of order 1, not 1e-1."""
    return tiny_vit(seed, qkv_scale=8, **kwargs).state_dict()


def seeded_models():
    cfg = regression_config()
    student, teachers, _ = build_models(cfg)
    student.backbone.load_state_dict(seeded_timm(STUDENT, 1))
    for seed, name in enumerate(("sup", "mim"), start=2):
        teachers.teachers[name].model.load_state_dict(seeded_timm(TEACHER, seed))
    torch.manual_seed(4)
    for head in student.heads.values():
        head.reset_parameters()
    return cfg, student, teachers


def step_values() -> dict[str, np.ndarray]:
    """keep, features and relations of every teacher, and the loss parts of one training step."""
    cfg, student, teachers = seeded_models()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    values = teacher_values(teachers, images.float() / 255.0)
    run = RunContext(
        torch.device("cpu"), None, {n: t.weight for n, t in cfg.teachers.items()}, cfg.loss.beta, cfg.optim.clip_grad
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    student.train()
    parts = train_step(student, teachers, [images], build_optimizer(student, cfg.optim), scaler, 1e-3, run)
    values.update({f"loss/{k}": v.detach().float().numpy() for k, v in parts.items() if k != "skipped"})
    return values


def teacher_values(teachers, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """The code under test's targets, keyed by teacher and resolved block index."""
    targets = teachers(pixels)
    values = {"keep": targets.keep.numpy()}
    values.update({f"features/{name}": feats.numpy() for name, feats in targets.features.items()})
    for name, relations in targets.relations.items():
        values.update({f"relations/{name}/{block}": rel.numpy() for block, rel in relations.items()})
    return values


def test_the_step_gives_the_recorded_keep_targets_and_loss_parts():
    recorded = np.load(RECORDING)
    values = step_values()
    assert sorted(values) == sorted(recorded.files)
    assert recorded["keep"].shape == (4, 21)  # 64 -> 44 -> 30 -> 21 patches
    np.testing.assert_array_equal(values["keep"], recorded["keep"])
    for key in recorded.files:
        if key != "keep":
            np.testing.assert_allclose(values[key], recorded[key], rtol=1.3e-6, atol=1e-5, err_msg=key)


if __name__ == "__main__":
    RECORDING.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(RECORDING, **step_values())
    print(f"written: {RECORDING}")
