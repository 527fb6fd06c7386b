"""Checks of every input before anything is built or written: ranges of numeric settings, names,
devices, files and output folders. Each failure is one line naming the key (or flag) and the fix,
raised as ConfigError, which every command turns into exit code 2.

Models are not built here: depths come from a model built on the meta device (no memory, no init).
"""

import math
import os
import re
from pathlib import Path

import torch
from omegaconf import DictConfig

from .config import ConfigError

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")


def finite(key: str, value) -> None:
    """NaN compares false with everything and inf passes every lower bound: neither is a setting."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be a finite number")


def at_least(key: str, value, low) -> None:
    finite(key, value)
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")


def positive(key: str, value) -> None:
    finite(key, value)
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0")


def within(key: str, value, low, high, open_low: bool = False) -> None:
    finite(key, value)
    if not (low < value <= high if open_low else low <= value <= high):
        raise ConfigError(f"{key}={value} must be in {'(' if open_low else '['}{low}, {high}]")


def device(key: str, name: str) -> None:
    """auto | cpu | cuda | cuda:N, and a CUDA device only where one is visible."""
    if not DEVICE.fullmatch(str(name)):
        raise ConfigError(f"{key}={name} is not a device: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"{key}={name} but {count} CUDA device(s) are visible: use {key}=cpu or auto")


def writable_dir(key: str, path: str | Path) -> None:
    """The folder exists and is writable, or can be made: its nearest existing ancestor is a
    writable folder (not a file)."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={path}: {existing} is a file, not a folder; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {existing} is not writable; choose a folder you can write to")


def run_name(name: str) -> None:
    """One plain path component, so the run stays inside output_dir."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable():
        raise ConfigError(
            f"name={name!r} must be one folder name (printable, no '/', not '.' or '..'): runs stay inside output_dir"
        )
    if len(name.encode()) > 200:
        raise ConfigError(
            f"name={name[:20]}... is {len(name.encode())} bytes long; a folder name takes at most 200 "
            "here (255 on most file systems, less the suffixes added to it)"
        )


def weight_file_problem(path: Path) -> str | None:
    """What is wrong with a weight file, judged from its first bytes: torch zip, legacy torch pickle
    or safetensors (8-byte little-endian header length, then a JSON header)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): the download or copy was cut short"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None
    if len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return None
    return f"is not a weight file ({size} bytes that are neither a torch zip archive, a torch pickle nor safetensors)"


def weight_file(key: str, path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}={path}: no such file")
    if path.is_dir():
        from .files import newest_complete

        if newest_complete(path) is None:
            raise ConfigError(
                f"{key}={path}: a folder without complete checkpoints/checkpoint-*.pt; "
                "pass a weight file or a run directory"
            )
        return
    problem = weight_file_problem(path)
    if problem:
        raise ConfigError(f"{key}={path} {problem}; pass a .pth/.pt/.safetensors weight file")


def model_spec(key: str, spec: str) -> None:
    """A run directory, one of our files, or a timm name: checked without loading it."""
    path = Path(spec)
    if path.exists():
        weight_file(key, path)
    elif path.suffix in {".pt", ".pth", ".safetensors", ".bin"} or "/" in spec:
        raise ConfigError(f"{key}={spec}: no such model file or run directory")
    else:
        timm_arch(key, spec)


def timm_arch(key: str, arch: str) -> None:
    import timm

    if not timm.is_model(arch.split(".")[0]):
        close = timm.list_models(f"*{arch.split('.')[0].split('_')[0]}*")[:5]
        raise ConfigError(f"{key}={arch}: unknown timm model; close names: {close} (see timm.list_models())")


def depth_of(key: str, arch: str, model_kwargs: dict) -> int:
    """Blocks of the ViT `arch` would build, from a model on the meta device."""
    from .models.load import create_vit

    timm_arch(key, arch)
    try:
        with torch.device("meta"):
            model = create_vit(arch, **model_kwargs)
    except Exception as err:  # timm rejects kwargs with TypeError, AssertionError, ValueError, ...
        raise ConfigError(
            f"{key.rsplit('.', 1)[0]}.model_kwargs={model_kwargs}: timm cannot build {arch} "
            f"with them ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if not hasattr(model, "blocks"):
        raise ConfigError(f"{key}={arch} is not a ViT (no transformer blocks); use a vit_* timm name")
    return len(model.blocks)


def block_index(key: str, index: int, depth: int, arch: str) -> None:
    if not -depth <= index < depth:
        raise ConfigError(
            f"{key}: block {index} does not exist in a model with {depth} blocks ({arch}: "
            f"0..{depth - 1} or -{depth}..-1)"
        )


def pair(key: str, values, length: int) -> None:
    if len(values) != length:
        raise ConfigError(f"{key}={list(values)} must hold {length} values")


def check_config(cfg: DictConfig) -> None:
    """Every numeric setting in range, names and devices valid, output folder writable, files
    readable, block indices within the models: all before any model is built."""
    run_name(cfg.name)
    at_least("seed", cfg.seed, 0)
    if cfg.seed >= 2**32:
        raise ConfigError(f"seed={cfg.seed} must be < 2**32")
    writable_dir("output_dir", cfg.output_dir)
    check_data(cfg.data)
    check_optim(cfg.optim)
    check_train(cfg.train)
    positive("loss.beta", cfg.loss.beta)
    check_student(cfg.student)
    for name, teacher in cfg.teachers.items():
        check_teacher(f"teachers.{name}", teacher)
    check_models(cfg)


def check_data(d: DictConfig) -> None:
    at_least("data.img_size", d.img_size, 1)
    pair("data.crop_scale", d.crop_scale, 2)
    low, high = d.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"data.crop_scale={list(d.crop_scale)} must be ordered within (0, 1], e.g. [0.2, 1.0]")
    within("data.hflip", d.hflip, 0, 1)
    if d.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation={d.interpolation} is not one of {', '.join(INTERPOLATIONS)}")
    for key in ("num_samples", "limit", "num_workers"):
        at_least(f"data.{key}", d[key], 0)
    at_least("data.synthetic_size", d.synthetic_size, 1)
    at_least("data.prefetch_factor", d.prefetch_factor, 1)
    within("data.max_bad_fraction", d.max_bad_fraction, 0, 1)
    at_least("data.bad_check_every", d.bad_check_every, 1)


def check_optim(o: DictConfig) -> None:
    at_least("optim.batch_size", o.batch_size, 1)
    at_least("optim.accum_steps", o.accum_steps, 1)
    positive("optim.blr", o.blr)
    for key in ("weight_decay", "warmup_epochs", "min_lr", "clip_grad"):
        at_least(f"optim.{key}", o[key], 0)
    pair("optim.betas", o.betas, 2)
    for i, beta in enumerate(o.betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"optim.betas[{i}]={beta} must be in [0, 1)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if o.batch_size % (o.accum_steps * world):
        raise ConfigError(
            f"optim.batch_size={o.batch_size} is not divisible by world size x optim.accum_steps "
            f"= {world * o.accum_steps}"
        )


def check_train(t: DictConfig) -> None:
    at_least("train.epochs", t.epochs, 1)
    at_least("train.log_every", t.log_every, 1)
    at_least("train.monitor_images", t.monitor_images, 1)
    for key in (
        "max_steps",
        "ckpt_every_steps",
        "keep_checkpoints",
        "monitor_every",
        "max_nonfinite_steps",
        "good_state_every",
    ):
        at_least(f"train.{key}", t[key], 0)
    device("train.device", t.device)


def check_student(s: DictConfig) -> None:
    within("student.drop_path", s.drop_path, 0, 1)
    pair("student.mean", s.mean, 3)
    pair("student.std", s.std, 3)
    for i, (mean, std) in enumerate(zip(s.mean, s.std)):
        finite(f"student.mean[{i}]", mean)
        positive(f"student.std[{i}]", std)
    if s.mask_recon.patch is not None:
        at_least("student.mask_recon.patch", s.mask_recon.patch, 1)


def check_teacher(key: str, t: DictConfig) -> None:
    at_least(f"{key}.weight", t.weight, 0)


def check_teacher_files(cfg: DictConfig) -> None:
    """Teacher weight files readable: checked when a run starts, not when its config is made (a
    study writes configs before it trains their teachers)."""
    for name, t in cfg.teachers.items():
        if t.weights not in ("pretrained", "random"):
            weight_file(f"teachers.{name}.weights", t.weights)


def check_models(cfg: DictConfig) -> None:
    """Architectures exist and every block index lies within its model."""
    kwargs = {"drop_path_rate": cfg.student.drop_path, **cfg.student.model_kwargs}
    depth_of("student.arch", cfg.student.arch, kwargs)
    depths = {}
    for name, t in cfg.teachers.items():
        from .weights.teachers import resolve_arch

        arch = resolve_arch(t.arch)
        depths[name] = depth_of(f"teachers.{name}.arch", arch, dict(t.model_kwargs))
        block_index(f"teachers.{name}.feature_block", t.feature_block, depths[name], arch)
        for b in t.relation_blocks:
            block_index(f"teachers.{name}.relation_blocks", b, depths[name], arch)
    picker = cfg.masking.teacher
    if picker is not None and cfg.masking.blocks is not None:
        for b in cfg.masking.blocks:
            within("masking.blocks", b, 0, depths[picker] - 1)
