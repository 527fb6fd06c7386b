"""The demo end to end in its seconds-long form, on IDX files the test writes."""

import json

import numpy as np
import pytest
from conftest import write_idx

from hybrid_distill.cli import main


def bands(folder, prefix: str, n: int, seed: int) -> None:
    """Class c is a bright band at rows 2c to 2c + 7 over a dark noisy image: separable by the pixels' cosine
    similarity, which k-NN uses (one grey level per class is not: constant images all point one way)."""
    labels = np.arange(n) % 10
    images = np.random.default_rng(seed).integers(0, 30, (n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c : 2 * c + 8] += 200
    write_idx(folder, prefix, images.astype(np.uint8), labels)


@pytest.mark.slow
def test_fast_demo_writes_results_report_and_figures(tmp_path):
    data, out = tmp_path / "fmnist", tmp_path / "demo"
    bands(data, "train", 96, 0)
    bands(data, "t10k", 32, 1)
    assert main(["demo", "--fast", "--data", str(data), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["frozen"]) == {
        "pixels",
        "random_init",
        "teacher_sup",
        "teacher_mae",
        "hybrid",
        "distill_sup",
        "distill_mae",
    }
    pixels = results["frozen"]["pixels"]
    # the pixel baseline through the demo's own k-NN and probe: the nearest images by cosine share the band,
    # and a linear probe separates the bands far above the 10% of chance
    assert pixels["knn"]["top1"] == 100.0 and pixels["linear"]["top1"] >= 80.0, pixels
    assert set(results["finetune"]) == {"hybrid", "random_init"}
    assert results["provenance"]["git_sha"]
    assert "| hybrid |" in (out / "report.md").read_text()
    for figure in ("distance.png", "distance_plain.png", "nmi.png"):
        assert (out / "analysis" / figure).stat().st_size > 0
