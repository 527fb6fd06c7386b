"""JPEG decoding, RandomResizedCrop and flip on the GPU (`data.decode=gpu`).

The loader's workers read a file's bytes and its size (from the JPEG header, without decoding) and
draw the crop and the flip with torchvision's own `RandomResizedCrop.get_params` and
`RandomHorizontalFlip` draws, under the sample's seed: the same crop as the PIL path
(`pretrain_transform`), so exact resume and rank independence still hold. The trainer then decodes
the batch with nvJPEG (`torchvision.io.decode_jpeg(list, device="cuda")`) and resizes each crop with
antialiased bicubic interpolation (PIL's filter; values differ from PIL's by rounding).
"""

import io

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg

from ..config_schema import ConfigError
from .reader_images import ReaderImages

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision RandomResizedCrop's default aspect ratio range


def crop_params(width: int, height: int, crop_scale=(0.2, 1.0), hflip: float = 0.5) -> torch.Tensor:
    """(top, left, height, width, flip) drawn from torch's global RNG exactly as pretrain_transform
    draws them: RandomResizedCrop.get_params, then RandomHorizontalFlip's torch.rand(1) < p."""
    shape = torch.empty((), dtype=torch.uint8).expand(3, height, width)  # get_params reads the size only
    top, left, h, w = T.RandomResizedCrop.get_params(shape, list(crop_scale), list(RATIO))
    flip = bool(torch.rand(1) < hflip) if hflip > 0 else False
    return torch.tensor([top, left, h, w, int(flip)])


class EncodedImages(ReaderImages):
    """A timm reader's files as (JPEG bytes, (width, height)) and label; the size from the header only.
    A file that is not a JPEG raises like an unreadable one (the loader counts and replaces it)."""

    def __getitem__(self, index: int):
        source, target = self.reader[index][:2]
        data = source.read() if hasattr(source, "read") else open(source, "rb").read()
        if hasattr(source, "close"):
            source.close()
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"data.decode=gpu reads JPEGs only; this file is {image.format}")
            return (data, image.size), int(target)


class EncodedCrop:
    """The loader-side transform of data.decode=gpu: (JPEG bytes, size) -> (uint8 bytes tensor, crop
    params (5,)), the draws made under the sample's seed as pretrain_transform makes them."""

    def __init__(self, crop_scale=(0.2, 1.0), hflip: float = 0.5):
        self.crop_scale, self.hflip = tuple(crop_scale), hflip

    def __call__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        data, (width, height) = item if isinstance(item, tuple) else (item, Image.open(io.BytesIO(item)).size)
        params = crop_params(width, height, self.crop_scale, self.hflip)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), params


class EncodedBatch:
    """A micro-batch of data.decode=gpu: JPEG bytes per image and crop params (B, 5)."""

    def __init__(self, encoded: list[torch.Tensor], params: torch.Tensor):
        self.encoded, self.params = encoded, params

    def __len__(self) -> int:
        return len(self.encoded)

    def decode(self, size: int, device: torch.device, interpolation: str = "bicubic") -> torch.Tensor:
        return decode_crop_flip(self.encoded, self.params, size, device, interpolation)


def collate_encoded(samples):
    """[((bytes, params), label, bad)] -> (EncodedBatch, labels (B,), bad (B,)), as default_collate for
    the rest."""
    (items, labels, bad) = zip(*samples)
    batch = EncodedBatch([d for d, _ in items], torch.stack([p for _, p in items]))
    return batch, torch.tensor(labels), torch.tensor(bad)


def encoded_inputs(cfg, dataset):
    """(dataset, transform, collate_fn) of data.decode=gpu for a folder or tar dataset."""
    inner, indices = (
        (dataset.dataset, dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else (dataset, None)
    )
    if not hasattr(inner, "reader"):
        raise ConfigError(
            f"data.decode=gpu reads JPEG files from data.dataset=folder or tar; "
            f"data.dataset={cfg.dataset} has none: use data.decode=pil"
        )
    encoded = EncodedImages(inner.reader)
    encoded = torch.utils.data.Subset(encoded, indices) if indices is not None else encoded
    return encoded, EncodedCrop(cfg.crop_scale, cfg.hflip), collate_encoded


def crop_resize_flip(
    image: torch.Tensor, params: torch.Tensor, size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): the crop, resized with antialiasing, flipped if asked."""
    top, left, h, w, flip = params.tolist()
    crop = image[None, :, top : top + h, left : left + w].float()  # (1, 3, h, w)
    out = F.interpolate(crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    out = out.flip(-1) if flip else out
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_crop_flip(
    encoded: list[torch.Tensor], params: torch.Tensor, size: int, device: torch.device, interpolation: str = "bicubic"
) -> torch.Tensor:
    """JPEG bytes (a list of uint8 tensors) and params (B, 5) -> uint8 (B, 3, size, size) on `device`;
    one batched decode call (nvJPEG on CUDA, libjpeg on the CPU)."""
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return torch.stack([crop_resize_flip(img, p, size, interpolation) for img, p in zip(images, params)])


def check_gpu_decode(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError(
            f"data.decode=gpu decodes with nvJPEG on a CUDA device; this run is on {device.type}: use data.decode=pil"
        )
