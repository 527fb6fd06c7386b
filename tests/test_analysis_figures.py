"""Analysis figures that do not mislead: a distance axis from 0 with the uniform-attention reference,
one colour scale with its bar on the attention maps, example images from different classes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hybrid_distill.analysis import plots
from hybrid_distill.analysis.command import main as analyze
from hybrid_distill.analysis.metrics import attention_distance, uniform_distance
from hybrid_distill.files import save_model_file
from hybrid_distill.models.load import create_vit


def test_uniform_distance_is_the_distance_of_uniform_attention():
    grid, patch = (3, 4), (8, 8)
    attn = torch.full((1, 1, 13, 13), 1 / 13)  # CLS + 12 patches, every row uniform
    assert uniform_distance(grid, patch) == pytest.approx(float(attention_distance(attn, grid, patch)), rel=1e-6)


def test_distance_axis_starts_at_zero_and_shows_the_reference():
    values = torch.tensor([[40.0, 40.5], [40.2, 40.9]])  # a 1-pixel spread: autoscale would fill the axis with it
    assert plots.distance_limits(values, uniform=50.0) == (0.0, pytest.approx(55.0))
    assert plots.distance_limits(values, uniform=10.0) == (0.0, pytest.approx(1.1 * 40.9))


def class_sorted_folder(root, classes=3, per_class=4):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_attention_maps_have_one_scale_a_colour_bar_and_images_of_different_classes(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append((path.name, fig)) or path)
    data = class_sorted_folder(tmp_path / "images")
    kw = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / "m.pt")
    assert (
        analyze(
            [
                str(tmp_path / "m.pt"),
                "--data",
                str(data),
                "--num-images",
                "12",
                "--map-images",
                "2",
                "--layers",
                "1",
                "2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "analysis.json").read_text())["models"]["m"]
    shown = report["query_maps"]["image_indices"]
    assert [index // 4 for index in shown] == [0, 1]  # the first image of two classes, not two of class 0
    assert report["uniform_distance"] == pytest.approx(uniform_distance((4, 4), (4, 4)))
    maps = dict(figures)["attention_maps_m.png"]
    bars = [ax for ax in maps.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    vmaxes = {im.get_clim()[1] for ax in maps.axes for im in ax.get_images()[1:]}
    assert len(vmaxes) == 1  # every panel on the bar's scale
    distance = dict(figures)["distance.png"]
    assert distance.axes[0].get_ylim()[0] == 0.0
    assert any(line.get_label() == "uniform attention" for line in distance.axes[0].get_lines())
