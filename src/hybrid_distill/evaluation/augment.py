"""timm's RandAugment / AutoAugment with a posterize that accepts 0 bits on every Pillow.

timm's RandAugment maps magnitude 10 of 'PosterizeIncreasing' to 0 bits kept
(`4 - int(level / 10 * 4)`, timm `data/auto_augment.py`), and with `mstd0.5` a magnitude of 9
reaches 10 about 2 % of the time. Pillow < 13 turned 0 bits into an all-black image (its mask
`~(2**8 - 1) & 0xff` is 0, as TensorFlow's `posterize` with 0 bits); Pillow 13 raises
"bits must be between or equal to 1 and 8" instead, which ended a fine-tune in its first epoch.
Here the ops that call timm's posterize get one that keeps the old result.
"""

from PIL import Image, ImageOps
from timm.data import auto_augment


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the `bits_to_keep` most significant bits of each channel; 0 bits gives black."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every channel 0, as Pillow < 13 and TensorFlow
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform) -> list:
    """The AugmentOp objects of a RandAugment (`ops`) or an AutoAugment (`policy`)."""
    ops = list(getattr(transform, "ops", None) or [])
    for sub_policy in getattr(transform, "policy", None) or []:
        ops.extend(sub_policy)
    return [op for op in ops if isinstance(op, auto_augment.AugmentOp)]


def patch_posterize(transform):
    """Give every posterize op inside a torchvision Compose the 0-bit-safe posterize; returns it."""
    for t in getattr(transform, "transforms", [transform]):
        for op in _augment_ops(t):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize
    return transform
