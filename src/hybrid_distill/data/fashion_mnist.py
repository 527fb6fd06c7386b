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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
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
            raise ValueError(f"{root}: {len(self.images)} images but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
