"""Which training images each part of a study sees, from one seeded order of the train split.

    order = limit_indices' permutation of the train split (seed 0)
    teachers' training images   order[:teachers.NAME.images]
    students' images            order[:base.data.limit]   (data.limit draws the same permutation)
    evaluation bank / probe     order[:evaluate.train_images]
    teacher gate queries        order[-evaluate.heldout_images:]
    teacher curve images        order[-curve_images:]     (inside the gate's queries: curve_images <= heldout_images)

The students distil on images their teachers trained on (as the paper's students see ImageNet,
which their teachers saw); the gate's queries and the curve's images are seen by no model in
training, which `check_disjoint` enforces. The test split is read only by the evaluation.
"""

import torch

from ..data.subset import LIMIT_SEED
from .spec import StudyError


def train_order(size: int, seed: int = LIMIT_SEED) -> list[int]:
    """The train split's indices in the order every part of the study takes its images from."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


def first(size: int, count: int) -> list[int]:
    """The first `count` images of the order (0 or more than the split: all), sorted for local reads."""
    order = train_order(size)
    return sorted(order[:count] if 0 < count < size else order)


def last(size: int, count: int) -> list[int]:
    """The last `count` images of the order, the held-out end no part trains on."""
    if not 0 < count <= size:
        raise StudyError(f"held-out images: asked for {count} of a {size}-image train split")
    return sorted(train_order(size)[size - count :])


def check_disjoint(size: int, trained: dict[str, int], heldout: int) -> None:
    """Every set a model trains on (or is evaluated as a bank on) leaves the held-out end untouched."""
    for name, count in trained.items():
        used = count if 0 < count < size else size
        if used + heldout > size:
            raise StudyError(
                f"{name}: {used} training images + {heldout} held out exceed the {size} images of the "
                f"train split, so the held-out images would be trained on; lower one of them"
            )
