"""A teacher's attention distance per head, recorded as it trains (does MIM give it local heads?).

Read on held-out training images (splits.last) with the analysis' own metric (renormalised
attention distance, Park et al. 2023), against uniform attention over the grid: a head at
<= 0.6 x uniform is what this project calls local.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analysis.extract import dataset_metrics
from ..analysis.metrics import uniform_distance
from ..files import write_atomic
from ..models.tokens import Normalize

LOCAL = 0.6  # a head is local at <= LOCAL x the uniform-attention distance


def curve_images(dataset, indices: list[int], mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalised images of a Fashion-MNIST-like dataset of PIL images."""
    pixels = np.stack([np.asarray(dataset[i][0].convert("RGB")) for i in indices])  # (B, H, W, 3)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return Normalize(mean, std)(images)


def head_distances(encoder: nn.Module, images: torch.Tensor, batch: int = 64) -> list[list[float]]:
    """Mean attention distance (pixels) per layer and head, (layers, H), over the images."""
    metrics = dataset_metrics(encoder, images.split(batch))
    return metrics["distance"].mean(dim=1).tolist()


def point(encoder: nn.Module, images: torch.Tensor, epoch: int) -> dict:
    pe = encoder.patch_embed
    uniform = uniform_distance(tuple(pe.grid_size), tuple(pe.patch_size))
    heads = head_distances(encoder, images)
    lowest = min(min(layer) for layer in heads)
    return {"epoch": epoch, "uniform": uniform, "per_head": heads, "min_ratio": lowest / uniform}


def append(path: Path, entry: dict) -> list[dict]:
    """The curve file with `entry` added (an entry of the same epoch, from an interrupted run, replaced)."""
    curve = [e for e in read(path) if e["epoch"] != entry["epoch"]] + [entry]
    curve.sort(key=lambda e: e["epoch"])
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(curve, indent=1)))
    return curve


def read(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else []


def recorder(encoder: nn.Module, images: torch.Tensor, path: Path, every: int, log=print):
    """`after_epoch(epoch)` for demo.teachers.fit: a curve point every `every` epochs, and at epoch 0."""
    if not read(path):
        append(path, point(encoder, images, 0))

    def after_epoch(epoch: int) -> None:
        if epoch % every == 0:
            entry = append(path, point(encoder, images, epoch))[-1]
            log(
                f"[curve] epoch {epoch}: lowest head distance {entry['min_ratio']:.3f} x uniform "
                f"({entry['uniform']:.2f} px)"
            )

    return after_epoch


def plot(curve: list[dict], path: Path, title: str) -> Path:
    """Per layer, its most local head's distance over uniform, against epochs; the LOCAL line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in curve]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for layer in range(len(curve[0]["per_head"])):
        ax.plot(
            epochs, [min(e["per_head"][layer]) / e["uniform"] for e in curve], marker="o", ms=3, label=f"L{layer + 1}"
        )
    ax.axhline(LOCAL, ls="--", color="gray", lw=1, label=f"local: {LOCAL} x uniform")
    ax.axhline(1.0, ls=":", color="gray", lw=1, label="uniform attention")
    ax.set_xlabel("epoch")
    ax.set_ylabel("most local head's distance / uniform")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
