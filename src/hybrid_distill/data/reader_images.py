"""A timm reader's samples decoded by us (the PIL path and the GPU path's `EncodedImages` build on it)."""

import torch
from PIL import Image


class ReaderImages(torch.utils.data.Dataset):
    """A timm reader's samples decoded here, so that an unreadable file raises (timm's ImageDataset
    silently retries the next one) and is counted and reported by the training loop."""

    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        source, target = self.reader[index][:2]
        image = source if isinstance(source, Image.Image) else Image.open(source)
        return image.convert("RGB"), int(target)

    def filename(self, index: int, absolute: bool = True) -> str:
        return self.reader.filename(index, absolute=absolute)
