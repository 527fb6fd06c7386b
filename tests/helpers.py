"""Helpers shared by several test files: files the tests write (image folders, configs), a training run's
logged records, and the command line of a training subprocess."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

# a subprocess trains on one thread, as the tests themselves do, and prints at once
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hybrid_distill.cli", "train", str(config), *extra]


def logged(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl records, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def colour_folder(root: Path, n_per_class: int = 4, size: int = 20) -> Path:
    """An ImageFolder with train/ and val/ of two classes, solid red and solid blue: any model gives every image
    of a class the same features, so k-NN and a trained probe must reach 100% top-1."""
    for split in ("train", "val"):
        for c, colour in enumerate(("red", "blue")):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                Image.new("RGB", (size, size), color=colour).save(folder / f"{i}.png")
    return root


def jpeg_folder(root: Path, n: int, bad: int) -> list[str]:
    """n random 32x32 JPEGs under root/train in 2 classes; the first `bad` unreadable (half random bytes, half
    truncated JPEGs). Returns the unreadable files' paths."""
    rng = np.random.default_rng(0)
    broken = []
    for i in range(n):
        path = root / "train" / f"class{i % 2}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        if i < bad:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3] if i % 2 else rng.bytes(300))
            broken.append(str(path))
    return broken


def solid_images(n: int, classes: int = 3, size: int = 16) -> list:
    """(PIL image, label) pairs like ImageFolder's, image i of class i % classes in that class's solid colour:
    separable by any model's features, so a trained probe must reach 100% top-1."""
    colours = ("red", "blue", "green", "yellow", "white")[:classes]
    return [(Image.new("RGB", (size, size), colours[i % classes]), i % classes) for i in range(n)]
