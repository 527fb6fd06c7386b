"""Real size: the paper's ViT-B setting, one training step at 224x224 (random init weights)."""

import pytest
import torch

from hybrid_distill.build import build_models
from hybrid_distill.config import from_dict
from hybrid_distill.engine import build_optimizer, train_step
from hybrid_distill.runtime import RunContext


@pytest.mark.slow
def test_one_step_vit_b_with_clip_and_mae_teachers():
    cfg = from_dict(
        {
            "student": {"arch": "vit_base_patch16_224"},
            "teachers": {
                "clip": {"arch": "vit_base_patch16_clip_quickgelu_224", "weights": "random", "features": True},
                "mim": {"arch": "vit_base_patch16_224", "weights": "random", "relation_blocks": [-3, -2]},
            },
            "masking": {"teacher": "mim"},
            "optim": {"batch_size": 2},
        }
    )
    student, teachers, _ = build_models(cfg)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    assert teachers(images.float() / 255).keep.shape == (2, 66)
    optimizer = build_optimizer(student, cfg.optim)
    ctx = RunContext(torch.device("cpu"), None, {"clip": 1.0, "mim": 1.0}, 2.0, 3.0)
    before = student.backbone.blocks[0].attn.qkv.weight.clone()
    parts = train_step(student, teachers, [images], optimizer, torch.amp.GradScaler("cpu", enabled=False), 1e-4, ctx)
    assert set(parts) == {"clip/feat", "mim/rel9", "mim/rel10", "loss", "grad_norm", "skipped"}
    assert not parts["skipped"]
    assert torch.isfinite(parts["loss"]) and parts["loss"] > 0
    assert not torch.equal(before, student.backbone.blocks[0].attn.qkv.weight)
