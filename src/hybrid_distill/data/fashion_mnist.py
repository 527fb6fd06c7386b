"""Fashion-MNIST from its IDX files (Xiao et al. 2017), read without torchvision's downloader.

The files come from the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist)
or any folder holding the four `*-idx?-ubyte[.gz]` files that torchvision would download.
IDX layout: big-endian magic (0x0803 images, 0x0801 labels), dims, then uint8 data.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_PREFIX = {"train": "train", "test": "t10k"}


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz", root / "raw" / name, root / "raw" / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}[.gz] not found under {root}. Install it with "
        "`sudo apt-get install dataset-fashion-mnist` or set data.path to a folder holding the IDX files."
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic 0x08 0x0D-type byte, then big-endian dims), checked to hold
    as many bytes as its dims say; a broken one is refused in one line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip: cut short or not gzip at all
        raise DataError(f"{path} cannot be read ({err}): download it again") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 3:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x}): download it again")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(
            f"{path} holds {len(raw) - 4 - 4 * ndim} bytes of data where its header says {dims} "
            f"({int(np.prod(dims))}): the file is cut short or padded; download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class FashionMNIST(torch.utils.data.Dataset):
    """(PIL 'L' image 28x28, int label) pairs; `images` and `labels` are the raw uint8 / int64 arrays."""

    classes = CLASSES

    def __init__(self, root: str | Path | None = None, split: str = "train", transform=None):
        if split not in _PREFIX:
            raise ValueError(f"split must be one of {sorted(_PREFIX)}, got '{split}'")
        root = Path(root) if root else DEBIAN_ROOT
        self.images = read_idx(_find(root, f"{_PREFIX[split]}-images-idx3-ubyte"))  # (n, 28, 28)
        self.labels = read_idx(_find(root, f"{_PREFIX[split]}-labels-idx1-ubyte")).astype(np.int64)
        if len(self.images) != len(self.labels):
            raise DataError(f"{root}: {len(self.images)} images but {len(self.labels)} labels: download them again")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
