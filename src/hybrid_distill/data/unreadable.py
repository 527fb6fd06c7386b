"""One policy for unreadable images in train, eval (k-NN, linear, fine-tune), analyze and the API: skip
them, count them, name them (one console line with the count and the file holding the names), and stop
when more than `max_fraction` of the images read are unreadable.

An image is unreadable when PIL cannot decode it (truncated, not an image, a format it lacks) or when it
has more than `max_pixels` pixels: PIL warns above its MAX_IMAGE_PIXELS and refuses above twice that, as
a guard against decompression bombs (Pillow docs, `Image.open`); here the warning already refuses, so
the limit is the number stated in the message.
"""

import contextlib
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: a quarter GiB of 3-byte pixels
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# what PIL and the readers raise on unreadable, truncated, non-image or too large files
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, *BOMB_ERRORS)


@contextlib.contextmanager
def pixel_limit(max_pixels: int):
    """PIL's decompression-bomb check at `max_pixels`, its warning raised as an error."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def reason(err: BaseException, max_pixels: int, key: str = "data.max_image_pixels") -> str:
    """Why an image is unreadable, in a few words; a bomb names the limit and the key that sets it."""
    if isinstance(err, BOMB_ERRORS):
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return f"{pixels}, above the limit of {max_pixels:,} ({key}; a decompression bomb guard)"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"


def check_pixel_limit(value, key: str = "data.max_image_pixels") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{key}={value!r} must be a whole number of pixels >= 1 (default {DEFAULT_MAX_PIXELS:,})")
    return value


def sample_name(dataset, index: int) -> str:
    """A file path for reports where the dataset knows it (timm readers, ImageFolder), else the index."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if hasattr(dataset, "filename"):
        return str(dataset.filename(index, absolute=True))
    if hasattr(dataset, "samples"):
        return str(dataset.samples[index][0])
    return f"index {index}"


@dataclass
class Policy:
    """How many unreadable images are too many, the pixel limit, and where their names go. `keys` name the
    settings in messages: the config's keys for train, the command's flags for eval and analyze."""

    max_fraction: float = 0.1
    max_pixels: int = DEFAULT_MAX_PIXELS
    names_file: Path | None = None
    keys: tuple[str, str] = ("data.max_bad_fraction", "data.max_image_pixels")

    def judge(self, what: str, bad: list[tuple[str, str]], total: int) -> None:
        """(name, reason) of the unreadable images among `total` of `what`: written, said, refused if too many."""
        if not bad:
            return
        main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0  # every rank judges
        where = "not written" if self.names_file is None else str(self.names_file)
        if main and self.names_file is not None:
            self.names_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.names_file, "a") as f:
                f.writelines(f"{what}\t{name}\t{why}\n" for name, why in bad)
        fraction = len(bad) / max(total, 1)
        line = f"{what}: {len(bad)} of {total} images unreadable ({100 * fraction:.1f}%), skipped; names in {where}"
        if fraction > self.max_fraction:
            raise DataError(f"{line}; above {self.keys[0]}={self.max_fraction}: fix the data or raise it")
        if main:
            print(line, file=sys.stderr, flush=True)


def unreadable_label(index: int) -> int:
    """The label of a stand-in: negative, and carrying the index it stands for."""
    return -1 - index


class Checked(torch.utils.data.Dataset):
    """An (image, label) dataset read under the policy's pixel limit; an unreadable item comes back as a
    blank stand-in with `unreadable_label(index)`, so a loader's workers never die of it and the rows it
    gives can be dropped after (`drop_unreadable`). Other attributes (classes, targets, root) pass through."""

    def __init__(self, dataset, policy: Policy, what: str):
        self.dataset, self.policy, self.what = dataset, policy, what

    def __getattr__(self, name):
        if name in ("dataset", "policy", "what"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int):
        with pixel_limit(self.policy.max_pixels):
            image, label = self.dataset[index]
            if isinstance(image, Image.Image):
                image.load()
        return image, label

    def __getitem__(self, index: int):
        try:
            return self.read(index)
        except BAD_IMAGE_ERRORS:
            return Image.new("RGB", (8, 8)), unreadable_label(index)

    def why(self, index: int) -> str:
        try:
            self.read(index)
        except BAD_IMAGE_ERRORS as err:
            return reason(err, self.policy.max_pixels, self.policy.keys[1])
        return "unreadable when first read"

    def judge(self, indices: list[int], total: int | None = None) -> None:
        bad = [(sample_name(self.dataset, i), self.why(i)) for i in indices]
        self.policy.judge(self.what, bad, len(self) if total is None else total)


def drop_unreadable(dataset, rows: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (features, logits) of readable images only; a Checked dataset's stand-ins are judged."""
    if not isinstance(dataset, Checked):
        return rows, labels
    bad = labels < 0
    if bad.any():
        dataset.judge([-1 - int(label) for label in labels[bad]])
    return rows[~bad], labels[~bad]


class _Probe(torch.utils.data.Dataset):
    def __init__(self, checked: Checked, indices: list[int]):
        self.checked, self.indices = checked, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.checked[self.indices[i]][1] < 0)


def readable_indices(checked: Checked, indices: list[int] | None = None, workers: int = 0) -> list[int]:
    """The readable ones of `indices` (default all), each read once (in `workers` loader processes); the
    unreadable ones judged. For what reads an image several times (fine-tune epochs) or a chosen few
    (analyze)."""
    indices = list(range(len(checked))) if indices is None else list(indices)
    probe = torch.utils.data.DataLoader(_Probe(checked, indices), batch_size=64, num_workers=workers)
    flags = torch.cat([batch for batch in probe]) if indices else torch.zeros(0, dtype=torch.long)
    checked.judge([i for i, f in zip(indices, flags.tolist()) if f], total=len(indices))
    return [i for i, f in zip(indices, flags.tolist()) if not f]


def add_unreadable_flags(parser) -> None:
    """eval's and analyze's settings of the policy (train's are data.max_bad_fraction, data.max_image_pixels)."""
    parser.add_argument(
        "--max-bad-fraction", type=float, default=0.1, help="stop when more of the images read are unreadable"
    )
    parser.add_argument(
        "--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images count as unreadable"
    )


def check_unreadable_flags(args) -> None:
    fraction = args.max_bad_fraction
    if not 0 <= fraction <= 1:  # also NaN
        raise DataError(f"--max-bad-fraction={fraction} must be in [0, 1]")
    check_pixel_limit(args.max_image_pixels, "--max-image-pixels")


def unreadable_policy(args, names_file: Path | None = None) -> Policy:
    keys = ("--max-bad-fraction", "--max-image-pixels")
    return Policy(args.max_bad_fraction, args.max_image_pixels, names_file, keys)
