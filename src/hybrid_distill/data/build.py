"""Datasets by name: image folders and tars through timm's readers, Fashion-MNIST IDX, synthetic."""

import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..guards import ignore_preemption_signals, kill_workers_at_exit
from .errors import DataError
from .fashion_mnist import FashionMNIST
from .reader_images import ReaderImages
from .sampler import SeededDataset, StepSampler
from .shards import ShardStream, StreamPosition, collate_readable, count_samples
from .subset import limit_subset
from .transforms import pretrain_transform
from .unreadable import check_pixel_limit

__all__ = ["DataError", "build_dataset", "build_loader"]


class SyntheticImages(torch.utils.data.Dataset):
    """Deterministic random RGB images, for benchmarks and tests."""

    def __init__(self, num_samples: int, img_size: int, num_classes: int = 10):
        self.num_samples, self.img_size, self.num_classes = num_samples, img_size, num_classes

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 256, (self.img_size, self.img_size, 3), dtype=np.uint8)
        return Image.fromarray(pixels), index % self.num_classes


def _split_root(path: Path, split: str) -> Path:
    return path / split if (path / split).is_dir() else path


def check_not_above_splits(root: Path) -> None:
    """A folder one level above a dataset (`root/imagenet/{train,val}`) would be read as classes
    `imagenet/train/...` and `imagenet/val/...` alike: the validation images would be trained on."""
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "train").is_dir() and any((child / v).is_dir() for v in ("val", "validation", "test")):
            raise DataError(
                f"data.path={root} holds {child / 'train'}/ and its validation split beside it: read as classes, "
                f"both would be trained on; set data.path={child} (its train/ is read)"
            )


def timm_dataset(name: str, path: str, split: str):
    """timm's create_dataset: '' or 'folder' for class folders, 'tar', 'wds/...', 'hfds/...'."""
    from timm.data import create_dataset

    root = Path(path)
    if name in ("folder", "", "tar"):
        root = _split_root(root, split)
        name = "" if name == "folder" else name
        if root.is_dir():
            check_not_above_splits(root)
    try:
        dataset = create_dataset(name, root=str(root), split=split, is_training=True)
    except (RuntimeError, OSError, EOFError, AssertionError, tarfile.TarError) as err:
        raise DataError(
            f"cannot read a dataset at data.path={root}: {str(err).splitlines()[0]} "
            "(expected one sub-folder per class holding images)"
        ) from None
    from timm.data import ImageDataset

    return ReaderImages(dataset.reader) if isinstance(dataset, ImageDataset) else dataset  # wds: iterable


def build_dataset(cfg, split: str | None = None):
    """An indexable dataset of (PIL image, label) from the data config."""
    split = split or cfg.split
    check_pixel_limit(cfg.max_image_pixels)
    if cfg.dataset == "wds":
        return shard_stream(cfg)
    if cfg.dataset == "synthetic":
        return SyntheticImages(cfg.synthetic_size, cfg.img_size)
    if cfg.dataset == "fashion_mnist":
        try:
            dataset = FashionMNIST(cfg.path, split="test" if split in ("test", "val") else "train")
        except FileNotFoundError as err:
            raise DataError(str(err)) from None
    else:
        if not cfg.path:
            raise DataError(f"data.path is not set for data.dataset='{cfg.dataset}': set data.path=/path/to/images")
        if not Path(cfg.path).exists() and "/" not in cfg.dataset:
            raise DataError(f"data.path={cfg.path} does not exist: set data.path to your image folder")
        dataset = timm_dataset(cfg.dataset, cfg.path, split)
    dataset = limit_subset(dataset, cfg.limit)
    if len(dataset) == 0:
        raise DataError(f"the dataset at {cfg.path} ({split} split) is empty: put images in class sub-folders")
    return dataset


def shard_stream(cfg) -> ShardStream:
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise DataError("data.dataset=wds needs webdataset: pip install 'hybrid-distill[wds]'") from None
    if not cfg.path:
        raise DataError("data.dataset=wds needs data.path=/shards/train-{000000..000999}.tar")
    if cfg.path.count("{") != cfg.path.count("}"):
        raise DataError(f"data.path={cfg.path} has unbalanced braces: write a shard range as train-{{000..099}}.tar")
    if cfg.num_samples <= 0:
        raise DataError("data.dataset=wds needs data.num_samples (the samples in the shards) for the epoch length")
    stream = ShardStream(cfg.path, None, cfg.num_samples)
    missing = [s for s in stream.shards if "://" not in s and not Path(s).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(stream.shards)} shards not found, e.g. {missing[0]}: check data.path")
    held = count_samples(stream.shards)
    if held is not None and cfg.num_samples > held:
        raise DataError(
            f"data.num_samples={cfg.num_samples} but the {len(stream.shards)} shards hold {held} samples: an epoch "
            f"would read each about {cfg.num_samples / max(held, 1):.1f} times; set data.num_samples={held}"
        )
    stream.max_pixels = cfg.max_image_pixels
    return stream


def stream_loader(
    cfg, stream: ShardStream, transform, global_batch: int, micro_batch: int, seed: int, rank: int, world: int
):
    stream.transform, stream.seed, stream.rank, stream.world = transform, seed, rank, world
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=micro_batch,
        num_workers=cfg.num_workers,
        collate_fn=collate_readable,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
        worker_init_fn=ignore_preemption_signals,  # with kill_workers_at_exit, called below
        generator=torch.Generator().manual_seed(seed),
    )  # iter() must not draw from the global RNG
    return loader, StreamPosition(stream, global_batch)


def build_loader(cfg, dataset, global_batch: int, micro_batch: int, seed: int, rank: int = 0, world: int = 1):
    """A loader that yields uint8 micro-batches in the sampler's resumable step order."""
    transform = pretrain_transform(cfg.img_size, cfg.crop_scale, cfg.hflip, cfg.interpolation)
    if cfg.num_workers > 0:
        kill_workers_at_exit()
    collate = None  # torch's default
    if cfg.decode == "gpu":  # JPEG bytes and crop draws; the trainer decodes and crops on the GPU
        from .gpu_decode import encoded_inputs

        dataset, transform, collate = encoded_inputs(cfg, dataset)
    if len(dataset) < global_batch:
        raise DataError(
            f"the dataset has {len(dataset)} samples, fewer than one global batch of {global_batch}: "
            "lower optim.batch_size or add data"
        )
    if isinstance(dataset, ShardStream):
        return stream_loader(cfg, dataset, transform, global_batch, micro_batch, seed, rank, world)
    sampler = StepSampler(len(dataset), global_batch, seed=seed, rank=rank, world=world)
    workers = cfg.num_workers
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset, transform, max_pixels=cfg.max_image_pixels),
        batch_size=micro_batch,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        worker_init_fn=ignore_preemption_signals,  # with kill_workers_at_exit, called below
        generator=torch.Generator().manual_seed(seed),
    )  # its own: iter() must not draw from the global RNG
    return loader, sampler
