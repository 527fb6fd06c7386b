"""`data.limit`: a seeded random subset, so that a folder sorted by class keeps every class."""

import torch

LIMIT_SEED = 0  # fixed, not the run's seed: runs that differ only in seed train on the same images


def limit_indices(size: int, limit: int, seed: int = LIMIT_SEED) -> list[int]:
    """`limit` distinct indices of range(size) drawn with `seed`, in ascending order (reads stay local)."""
    if not limit or limit >= size:
        return list(range(size))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=gen)[:limit].tolist())


def limit_subset(dataset, limit: int, seed: int = LIMIT_SEED):
    """The dataset itself when `limit` is 0 or covers it, else a seeded random Subset of `limit` samples."""
    if not limit or limit >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, limit_indices(len(dataset), limit, seed))
