"""A resumable, rank-aware sampler with per-sample augmentation seeds.

Each optimiser step takes the next `global_batch` indices of an epoch-seeded permutation; a rank
takes its contiguous share of them. Every index travels with a seed derived from (seed, epoch,
index), and the dataset seeds its augmentation with it, so a sample's crop does not depend on
worker count, world size or where a resumed run starts: resume is exact, and N ranks see what
one process would.
"""
import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class StepSampler(torch.utils.data.Sampler):
    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        if num_samples < global_batch:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch of "
                             f"{global_batch}; lower optim.batch_size or add data")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world = rank, world
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.global_batch // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        share = self.global_batch // self.world
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * share
            for i in order[first:first + share]:
                yield i, sample_seed(self.seed, self.epoch, i)


class SeededDataset(torch.utils.data.Dataset):
    """Wraps an indexable (image, label) dataset; items are addressed by (index, seed)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label
