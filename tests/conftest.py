"""Shared fixtures: tiny ViTs and configs that run in seconds on a CPU; plain helpers are in helpers.py.

Two suites. `pytest` runs the default one: every behaviour once, on tiny models and a few steps, in one
process. `pytest -m slow` (run by .ci/run) runs the tests marked `@pytest.mark.slow`: real-size models,
subprocesses and torchrun, and the longer variants of behaviours whose fast representative is in the
default suite (each slow test's file says which).
"""

import gzip
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

TINY = dict(img_size=28, patch_size=4, embed_dim=48, depth=6, num_heads=3)


def tiny_vit(seed: int = 0, qkv_scale: float = 1.0, **overrides):
    """A seeded tiny timm ViT; `qkv_scale` sharpens its attention (timm's init makes it near uniform)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", **{"num_classes": 0, **TINY, **overrides})
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(qkv_scale)
    return model


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fashion-MNIST's IDX layout (magic 0x0803 / 0x0801, big-endian dims), gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    header = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    header = (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big")
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


@pytest.fixture
def idx_folder(tmp_path):
    """A small Fashion-MNIST-format folder: 96 train and 32 test images of 10 classes."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 96), ("t10k", 32)):
        write_idx(tmp_path / "fmnist", prefix, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
    return tmp_path / "fmnist"


def tiny_run_config(idx_folder, out, **extra):
    teacher = {"arch": "vit_tiny_patch16_224", "weights": "random", "model_kwargs": dict(TINY)}
    values = {
        "name": "tiny",
        "output_dir": str(out),
        "seed": 0,
        "data": {"dataset": "fashion_mnist", "path": str(idx_folder), "img_size": 28, "num_workers": 0},
        "student": {"arch": "vit_tiny_patch16_224", "model_kwargs": dict(TINY), "drop_path": 0.1},
        "teachers": {"sup": {**teacher, "features": True}, "mim": {**teacher, "relation_blocks": [-3, -2]}},
        "masking": {"teacher": "mim"},
        "optim": {"batch_size": 16, "warmup_epochs": 1, "accum_steps": 1},
        "train": {"epochs": 2, "log_every": 1, "progress": False, "tensorboard": False},
    }
    for key, value in extra.items():
        node = values
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return values
