"""A study's per-layer figures: every row on one axis, mean over seeds with its 95% interval as a band
(paper figures 1 / 5a for attention distance, 2 / 5b for NMI), the shared teachers as dashed lines."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

TITLES = {
    "distance": (
        "attention distance (pixels)",
        "Average attention distance per layer\n(mean over heads and images; prefix dropped, rows renormalised)",
    ),
    "distance_plain": (
        "attention distance (pixels)",
        "Average attention distance per layer\n(mean over heads and images; prefix dropped, rows not renormalised)",
    ),
    "nmi": ("NMI", "Normalised mutual information of attention per layer\n(mean over heads and images)"),
}


def layer_figure(
    rows: dict[str, list[dict]],
    teachers: dict[str, list[float]],
    metric: str,
    note: str,
    path: Path,
    uniform: float | None = None,
) -> Path:
    """rows: {row: [summary of layer 1, layer 2, ...]} (stats.summary dicts); teachers: {name: [per layer]};
    uniform: the distance of uniform attention, drawn so that a near-flat axis is read against it."""
    ylabel, title = TITLES[metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for label, layers in rows.items():
        x = range(1, len(layers) + 1)
        (line,) = ax.plot(x, [s["mean"] for s in layers], marker="o", ms=3, label=f"{label} (n={layers[0]['n']})")
        if all(s["ci95"] for s in layers):
            ax.fill_between(
                x,
                [s["ci95"][0] for s in layers],
                [s["ci95"][1] for s in layers],
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
    for (label, values), grey in zip(teachers.items(), ("black", "dimgray", "darkgray", "silver")):
        ax.plot(range(1, len(values) + 1), values, ls="--", color=grey, lw=1, label=f"teacher {label}")
    if uniform is not None:
        ax.axhline(uniform, ls=":", color="gray", lw=1, label=f"uniform attention ({uniform:.2f})")
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{title}\n{note}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
