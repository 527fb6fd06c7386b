"""`data.limit` draws a seeded random subset: a class-sorted dataset keeps every class."""

import numpy as np
from conftest import write_idx
from omegaconf import OmegaConf

from hybrid_distill.config import DataConfig
from hybrid_distill.data.build import build_dataset
from hybrid_distill.data.subset import limit_indices


def test_limit_of_a_class_sorted_dataset_keeps_every_class(tmp_path):
    labels = np.repeat(np.arange(10), 60)  # 600 images sorted by class, as an ImageFolder lists them
    write_idx(tmp_path, "train", np.zeros((600, 28, 28), np.uint8), labels)
    cfg = OmegaConf.structured(DataConfig(dataset="fashion_mnist", path=str(tmp_path), limit=60))
    subset = build_dataset(cfg)
    chosen = subset.dataset.labels[subset.indices]
    assert len(subset) == 60 and len(set(subset.indices)) == 60
    assert set(chosen.tolist()) == set(range(10))  # the first 60 would be class 0 alone
    assert build_dataset(cfg).indices == subset.indices  # the same images on every run


def test_limit_indices_seeded_sorted_and_whole_when_large():
    assert limit_indices(100, 10) == limit_indices(100, 10) == sorted(limit_indices(100, 10))
    assert limit_indices(100, 10, seed=1) != limit_indices(100, 10)
    assert limit_indices(5, 0) == limit_indices(5, 9) == [0, 1, 2, 3, 4]
