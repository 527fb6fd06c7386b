"""A resumable, rank-aware sampler with per-sample augmentation seeds.

Each optimiser step takes the next `global_batch` indices of an epoch-seeded permutation; a rank
takes its contiguous share of them. Every index travels with a seed derived from (seed, epoch,
index), and the dataset seeds its augmentation with it, so a sample's crop does not depend on
worker count, world size or where a resumed run starts: resume is exact, and N ranks see what
one process would.
"""

import numpy as np
import torch
from PIL import Image

from .unreadable import BAD_IMAGE_ERRORS, DEFAULT_MAX_PIXELS, pixel_limit


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class StepSampler(torch.utils.data.Sampler):
    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of "
                f"{global_batch}; lower optim.batch_size or add data"
            )
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world = rank, world
        self.epoch, self.start_step = 0, 0
        self.skip = 0  # batches the trainer must discard after iter(): none, the sampler starts in place

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
            for i in order[first : first + share]:
                yield i, sample_seed(self.seed, self.epoch, i)


class SeededDataset(torch.utils.data.Dataset):
    """Wraps an indexable (image, label) dataset; items are addressed by (index, seed).

    Yields (image, label, bad): `bad` is the index of an unreadable sample that was replaced by the
    next readable one (so batches keep their size and no worker dies), or -1.
    """

    def __init__(self, dataset, transform, max_tries: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.dataset, self.transform, self.max_tries, self.max_pixels = dataset, transform, max_tries, max_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int):
        bad = -1
        for attempt in range(self.max_tries):
            try:
                with pixel_limit(self.max_pixels):
                    return self.dataset[(index + attempt) % len(self.dataset)], bad
            except BAD_IMAGE_ERRORS:
                bad = index if bad < 0 else bad
        # nothing readable nearby: a blank stand-in keeps the batch and the worker alive; it counts as
        # unreadable, and the trainer's fraction check stops the run (exit 3) instead of a traceback
        return (Image.new("RGB", (8, 8)), -1), index

    def __getitem__(self, item):
        index, seed = item
        (image, label), bad = self.load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label, bad
