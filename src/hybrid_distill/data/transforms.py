"""Pre-training augmentation (dBOT / MAE): RandomResizedCrop + horizontal flip, uint8 out.

One crop per image is shared by the student and every teacher; each model normalises it itself,
on the device, after the uint8 batch has been moved there (less host-to-device traffic).
"""

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def pretrain_transform(
    img_size: int, crop_scale=(0.2, 1.0), hflip: float = 0.5, interpolation: str = "bicubic"
) -> T.Compose:
    steps = [
        T.Lambda(to_rgb),
        T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=InterpolationMode(interpolation)),
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    return T.Compose(steps + [T.PILToTensor()])


def eval_transform(img_size: int, interpolation: str = "bicubic") -> T.Compose:
    """Resize (shorter side, then centre crop) to the model's input, uint8 out."""
    return T.Compose(
        [
            T.Lambda(to_rgb),
            T.Resize(img_size, interpolation=InterpolationMode(interpolation)),
            T.CenterCrop(img_size),
            T.PILToTensor(),
        ]
    )


def to_rgb(image):
    """Grayscale (Fashion-MNIST) and palette images become 3 channels."""
    return image if image.mode == "RGB" else image.convert("RGB")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float in [0, 1]."""
    return images.float().div_(255.0)
