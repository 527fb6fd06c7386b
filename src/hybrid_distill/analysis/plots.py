"""Figures in the style of the paper's figures 1-3 and 5 (matplotlib, Agg backend, files only).

Inputs are plain summaries (lists / tensors of per-head means), so the figures can be redrawn
from analysis.json without a model.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DISTANCE_TITLES = {
    "distance": "Average attention distance per head\n(prefix tokens dropped, rows renormalised; Park et al. 2023)",
    "distance_plain": "Average attention distance per head\n(prefix tokens dropped, rows not renormalised; dBOT)",
}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def distance_limits(values: torch.Tensor, uniform: float) -> tuple[float, float]:
    """The y range: from 0, up past both the data and the uniform-attention reference, so that a
    spread of a pixel is not stretched over the whole axis."""
    return 0.0, 1.1 * max(float(values.max()), uniform)


def distance_figure(
    per_head: dict[str, list[list[float]]], variant: str, path: Path, uniform: dict[str, float] | None = None
) -> Path:
    """One panel per model: every head's distance at every layer (dots) and the layer mean (line),
    on an axis from 0 with the uniform-attention distance as a dashed reference.

    per_head: {model label: [layers][heads] distances in pixels}; uniform: {model label: pixels}.
    Layers are drawn 1-indexed.
    """
    fig, axes = plt.subplots(
        1, len(per_head), figsize=(4 * len(per_head), 3.8), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, (label, values) in zip(axes[0], per_head.items()):
        d = torch.as_tensor(values)  # (layers, H)
        layer = torch.arange(1, d.shape[0] + 1)
        ax.scatter(layer.repeat_interleave(d.shape[1]), d.flatten(), s=12, alpha=0.6, label="head")
        ax.plot(layer, d.mean(dim=1), color="black", marker="o", ms=3, label="mean over heads")
        reference = (uniform or {}).get(label, 0.0)
        if reference:
            ax.axhline(reference, ls="--", color="gray", lw=1, label="uniform attention")
        ax.set_ylim(*distance_limits(d, reference))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(layer)
    axes[0][0].set_ylabel("attention distance (pixels)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(DISTANCE_TITLES[variant], fontsize=10)
    return _save(fig, path)


def nmi_figure(per_layer: dict[str, list[float]], path: Path) -> Path:
    """NMI per layer (mean over heads and images), all models on one axis (paper fig. 2)."""
    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    for label, values in per_layer.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("NMI")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Normalised mutual information of attention per layer\n(mean over heads and images)", fontsize=10)
    return _save(fig, path)


def attention_map_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    layers: list[int],
    queries: list[tuple[int, int]],
    patch_size: tuple[int, int],
    title: str,
    path: Path,
) -> Path:
    """Paper fig. 5c: where chosen query patches attend at chosen layers, over the image.

    images: (B, 3, H, W) in [0, 1]; maps: (len(layers), B, Q, L) head-mean attention to patches.
    One row per (image, query); first column the image with the query patch boxed, then one
    column per layer with the upsampled map over the greyed image.
    """
    n_layers, B, Q, _ = maps.shape
    H, W = images.shape[-2:]
    ph, pw = patch_size
    gh, gw = H // ph, W // pw
    fig, axes = plt.subplots(
        B * Q, n_layers + 1, figsize=(1.9 * (n_layers + 1), 1.9 * B * Q), squeeze=False, layout="constrained"
    )
    vmax = float(maps.max())  # one scale for every panel, shown by one colour bar
    for b in range(B):
        picture = images[b].permute(1, 2, 0).clamp(0, 1).numpy()
        for qi, (r, c) in enumerate(queries):
            row = axes[b * Q + qi]
            row[0].imshow(picture)
            row[0].add_patch(plt.Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, ec="red", lw=1.5))
            row[0].set_title(f"image {b}, query ({r},{c})", fontsize=7)
            for li, layer in enumerate(layers):
                m = maps[li, b, qi].reshape(1, 1, gh, gw)
                m = F.interpolate(m, size=(gh * ph, gw * pw), mode="nearest")[0, 0]
                row[li + 1].imshow(picture.mean(axis=-1), cmap="gray")
                shown = row[li + 1].imshow(
                    m.numpy(),
                    cmap="jet",
                    alpha=0.55,
                    vmin=0,
                    vmax=vmax,
                    extent=(-0.5, gw * pw - 0.5, gh * ph - 0.5, -0.5),
                )
                row[li + 1].set_title(f"layer {layer + 1} (max {float(m.max()):.3f})", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[:, 1:], shrink=0.8)
    bar.set_label("attention (head mean)", fontsize=7)
    bar.ax.axhline(1 / (gh * gw), color="white", lw=1)  # uniform attention over the patches
    fig.suptitle(f"{title}\nuniform attention = {1 / (gh * gw):.3f} (white line on the colour bar)", fontsize=9)
    return _save(fig, path)
