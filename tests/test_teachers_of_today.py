"""The shipped teachers-of-today experiments (configs/teachers_of_today/*.yaml) at tiny size, each teacher of
its own family (random weights, tiny dims): one optimiser step, and the student exported for timm."""

import json
import math
from pathlib import Path

import pytest
import torch

from hybrid_distill.config import from_dict, load_config, to_dict
from hybrid_distill.trainer import Trainer
from hybrid_distill.weights.export import export, load_timm_export

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "teachers_of_today").glob("*.yaml"))
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4)  # 4 x 4 tokens; PHI-S order 64


def tiny(values: dict, idx_folder, out) -> dict:
    """The experiment as written, every model small, each teacher's family kept (its timm name without
    the weights tag), random weights, Fashion-MNIST."""
    values["student"].update(model_kwargs=dict(SMALL))
    for teacher in values["teachers"].values():
        teacher.update(arch=teacher["arch"].split(".")[0], weights="random", model_kwargs=dict(SMALL))
    values["data"].update(dataset="fashion_mnist", path=str(idx_folder), img_size=32, num_workers=0)
    values["optim"].update(batch_size=8, warmup_epochs=0)
    values["train"].update(epochs=1, max_steps=1, progress=False, tensorboard=False, log_every=1)
    values["output_dir"] = str(out)
    return values


def test_the_three_experiments_are_shipped():
    assert [p.stem for p in CONFIGS] == [
        "hybrid_vitb_mae_clip_dinov3_phis",
        "hybrid_vitb_mae_dinov3",
        "hybrid_vitb_mae_siglip",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_takes_one_step_at_tiny_size_and_exports_a_timm_student(path, idx_folder, tmp_path):
    cfg = from_dict(tiny(to_dict(load_config(path)), idx_folder, tmp_path), where=path.name)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.student.parameters()]
    trainer.fit()
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    parts = [k for k in logged if k.endswith("/feat") or "/rel" in k]
    assert len(parts) == len(cfg.teachers) + 1  # a feature part per feature teacher, two MIM relation blocks
    assert logged["skipped"] == 0 and all(math.isfinite(logged[k]) and logged[k] > 0 for k in parts)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters(), strict=True))
    teachers = trainer.teachers.teachers
    families = {n: (type(t.model).__name__, t.has_cls, t.target_norm is not None) for n, t in teachers.items()}
    expected = {
        "mim": ("VisionTransformer", True, False),
        "dinov3": ("Eva", True, "phis" in path.stem),
        "clip": ("VisionTransformer", True, True),
        "siglip": ("VisionTransformer", False, False),
    }
    assert families == {n: expected[n] for n in families}
    for name, t in teachers.items():
        if t.target_norm is not None:
            assert logged[f"{name}/target_scale"] > 0 and int(t.target_norm.seen) == 1
    result = export(trainer.run_dir, "timm", tmp_path / "export", verify=True)
    assert result["max_feature_diff"] < 1e-5
    reloaded = load_timm_export(tmp_path / "export")  # timm.create_model('local-dir:...', pretrained=True)
    assert type(reloaded).__name__ == "VisionTransformer" and reloaded.patch_embed.grid_size == (4, 4)
