"""Frozen features of a timm ViT: extracted once, in batches, cached, gathered across ranks.

Datasets yield (PIL image, int label). Each model gets its own input pipeline: resize to its
image size, grayscale -> RGB, its own mean/std (a CLIP teacher and a student differ).
Under torch.distributed every rank embeds the strided shard rank::world and the shards are
gathered with all_gather, so every rank ends with the full (N, D) in dataset order.
"""

import hashlib
from collections.abc import Callable
from pathlib import Path

import timm.data
import torch
import torch.distributed as dist
from torch import nn

from hybrid_distill.data.unreadable import drop_unreadable
from hybrid_distill.files import save_atomic
from hybrid_distill.models.load import mean_std
from hybrid_distill.runtime import pick_device

POOLS = ("cls", "mean")


class ToRGB:
    """Grayscale (Fashion-MNIST) or RGBA images -> 3-channel RGB; a class so loaders can pickle it."""

    def __call__(self, image):
        return image.convert("RGB")


class Transformed(torch.utils.data.Dataset):
    """A (PIL image, label) dataset with `transform` applied to the image; optionally a subset."""

    def __init__(self, dataset, transform, indices=None):
        self.dataset, self.transform = dataset, transform
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), label


def input_size(model: nn.Module) -> tuple[int, int]:
    """The (H, W) a ViT was built for: its patch embedding's, else its pretrained_cfg's."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    return tuple(int(s) for s in size)


def eval_transform(model: nn.Module, crop_pct: float = 1.0):
    """Resize (+ centre crop when crop_pct < 1), RGB, tensor, the model's own mean/std."""
    mean, std = mean_std(model)
    tf = timm.data.create_transform(
        (3, *input_size(model)), is_training=False, mean=mean, std=std, crop_pct=crop_pct, interpolation="bicubic"
    )
    return _with_rgb(tf)


def _with_rgb(tf):
    from torchvision import transforms

    return transforms.Compose([ToRGB(), tf])


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(B, N, D) normed last-layer tokens -> (B, D): the CLS token or the mean of the patch tokens."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")


def feature_fn(model: nn.Module, pool: str = "cls") -> Callable[[torch.Tensor], torch.Tensor]:
    """images (B, 3, H, W) -> features (B, D) from forward_features (after the final norm)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
    prefix = getattr(model, "num_prefix_tokens", 1)
    return lambda images: pool_tokens(model.forward_features(images), pool, prefix)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_strided(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows rank::world from every rank -> all `total` rows in dataset order, on every rank.

    Shards differ in length by at most one row; each is padded to the longest for all_gather
    (which needs equal shapes) and the padding dropped again.
    """
    rank, world = _rank_world()
    if world == 1:
        return local
    longest = -(-total // world)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = local.new_empty((total, *local.shape[1:]))
    for r, part in enumerate(parts):
        n = len(range(r, total, world))
        out[r::world] = part[:n]
    return out


def _device(device) -> torch.device:
    """The device named (as `--device` takes it), or this rank's: its CUDA device when present."""
    if device is not None:
        return pick_device(device, "--device")
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def embed_dataset(
    fn: Callable[[torch.Tensor], torch.Tensor], dataset, batch_size: int = 256, num_workers: int = 0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply fn to every (tensor image, label) of dataset in batches -> (N, D) float32 cpu, (N,) int64.

    Each rank embeds its shard rank::world; results are gathered across ranks in dataset order.
    """
    rank, world = _rank_world()
    device = _device(device)
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    feats, labels = [], []
    for images, target in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = fn(images.to(device, non_blocking=True))  # (B, D)
        feats.append(out.float())
        labels.append(torch.as_tensor(target).to(device))
    dim = feats[0].shape[1] if feats else _probe_dim(fn, dataset, device)
    feats = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    return gather_strided(feats, len(dataset)).cpu(), gather_strided(labels, len(dataset)).cpu()


def _probe_dim(fn, dataset, device) -> int:
    image, _ = dataset[0]
    return fn(image[None].to(device)).shape[1]


def model_key(model: nn.Module) -> str:
    """Identity of a model's weights and input normalisation: sha256 over its state dict."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(repr(mean_std(model)).encode() + repr(input_size(model)).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_key(dataset) -> str:
    """A best-effort identity of a dataset: class, root/split, length, and its labels when exposed."""
    parts = [
        type(dataset).__name__,
        str(getattr(dataset, "root", "")),
        str(getattr(dataset, "split", "")),
        str(len(dataset)),
    ]
    labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
    if labels is not None:
        parts.append(hashlib.sha256(torch.as_tensor(labels).numpy().tobytes()).hexdigest())
    return "/".join(parts)


def extract_features(
    model: nn.Module,
    dataset,
    pool: str = "cls",
    batch_size: int = 256,
    num_workers: int = 0,
    device=None,
    crop_pct: float = 1.0,
    cache_dir: str | Path | None = None,
    data_key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features and (N,) labels of a (PIL image, label) dataset; eval mode, no grad.

    With cache_dir, the result is stored in / read from a .pt named by a hash of the model
    weights, the data identity (data_key, or `dataset_key(dataset)`), the pooling and crop.
    """
    key = None
    if cache_dir is not None:
        key = _cache_key(model, data_key or dataset_key(dataset), pool, crop_pct)
        cached = _read_cache(Path(cache_dir), key)
        if cached is not None:
            return cached
    device = _device(device)
    was_training = model.training
    model.eval().to(device)
    try:
        feats, labels = embed_dataset(
            feature_fn(model, pool),
            Transformed(dataset, eval_transform(model, crop_pct)),
            batch_size,
            num_workers,
            device,
        )
    finally:
        model.train(was_training)
    feats, labels = drop_unreadable(dataset, feats, labels)
    if key is not None and _rank_world()[0] == 0:
        _write_cache(Path(cache_dir), key, feats, labels)
    return feats, labels


def _cache_key(model, data_key: str, pool: str, crop_pct: float) -> dict:
    return {"model": model_key(model), "data": data_key, "pool": pool, "crop_pct": crop_pct}


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
    return cache_dir / f"features-{key['pool']}-{digest}.pt"


def _read_cache(cache_dir: Path, key: dict):
    path = _cache_path(cache_dir, key)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("key") != key:
        return None
    return payload["features"], payload["labels"]


def _write_cache(cache_dir: Path, key: dict, feats: torch.Tensor, labels: torch.Tensor) -> Path:
    return save_atomic(_cache_path(cache_dir, key), {"key": key, "features": feats, "labels": labels})
