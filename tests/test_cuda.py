"""The GPU training path: bf16 teachers, bf16 autocast and torch.compile on CUDA (scripts/gpu_check.sh).

Skipped where no CUDA device is visible; every other test also runs on CUDA there, since the tiny
runs use train.device=auto.
"""

import json

import pytest
import torch
from conftest import tiny_run_config

from hybrid_distill.config import from_dict
from hybrid_distill.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)")


def first_losses(idx_folder, out, **extra) -> tuple[Trainer, list[float]]:
    values = {"train.max_steps": 3, "train.device": "cuda", "train.amp": "bf16", "student.drop_path": 0.0, **extra}
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, out, **values)))
    trainer.fit()
    records = [line for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return trainer, [json.loads(r)["loss"] for r in records]


def test_bf16_compiled_cuda_run_follows_the_eager_one(idx_folder, tmp_path):
    eager, eager_losses = first_losses(idx_folder, tmp_path / "eager")
    compiled, compiled_losses = first_losses(idx_folder, tmp_path / "compiled", **{"train.compile": True})
    teacher = next(iter(compiled.teachers.teachers.values()))
    assert next(teacher.model.parameters()).dtype == torch.bfloat16 and teacher._compiled_call_impl is not None
    assert next(compiled.student.parameters()).dtype == torch.float32  # master weights stay fp32
    assert len(eager_losses) == len(compiled_losses) == 3
    for a, b in zip(eager_losses, compiled_losses):
        assert abs(a - b) <= 0.02 * abs(a), (eager_losses, compiled_losses)  # bf16 rounding, fused kernels
