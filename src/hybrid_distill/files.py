"""The project's own files: run checkpoints and model files, one atomic writer and one reader.

Both formats are plain dicts of tensors and builtins, so `torch.load(weights_only=True)` reads them:
- model file  {'format': 'hybrid-distill-model', 'arch', 'model_kwargs', 'state_dict', 'mean', 'std'}
- checkpoint  {'format': 'hybrid-distill-checkpoint', 'model': Student.state_dict() as it is
              (backbone.* and heads.*: a new submodule is saved and resumed with no renaming),
              'optimizer', 'scaler', 'step', 'epoch', 'rng', 'config', 'provenance'}
Checkpoints carry a SHA-256 beside them: one without a matching checksum was cut short (preempted
while writing, disk full) and is never resumed from. Official teacher formats live in `weights`.
"""

import errno
import hashlib
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config_schema import ConfigError
from .models.fd_encoder import create_student_vit
from .models.load import create_vit, mean_std, set_mean_std

MODEL_FORMAT = "hybrid-distill-model"
CHECKPOINT_FORMAT = "hybrid-distill-checkpoint"
BACKBONE = "backbone."  # the student's timm model inside Student.state_dict()


class CannotWrite(OSError):
    """A write the destination refused (full, read-only, not ours to write), said in one line naming it."""

    def __str__(self) -> str:
        return self.strerror  # the sentence alone, without OSError's '[Errno 28]'


class DiskFull(CannotWrite):
    """A write ran out of space, said in one line naming the folder and its free space."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_no_space(err: BaseException) -> bool:
    """ENOSPC / EDQUOT from Python's files, or a native writer's message of it (safetensors: 'os error 28')."""
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return True
    return "No space left on device" in str(err) or f"os error {errno.ENOSPC}" in str(err)


def disk_full(folder: Path) -> DiskFull:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return DiskFull(
        errno.ENOSPC,
        f"the disk of {folder} is full ({free / 2**20:.1f} MiB free): free space there or write elsewhere, "
        "then run again (a training run continues with --resume auto)",
    )


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temp path)`, fsync, rename: a crash never leaves a half file under the real name, and a
    failed write (a full disk: DiskFull; a read-only or foreign folder: CannotWrite) leaves no temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and is_no_space(err):
            raise disk_full(path.parent) from None
        if isinstance(err, OSError) and err.errno in NOT_WRITABLE:  # access() said yes: root on NFS, a remount
            raise CannotWrite(err.errno, f"cannot write {path}: {os.strerror(err.errno)}") from None
        raise
    return path


def _torch_save(payload: dict, tmp: Path) -> None:
    with open(tmp, "wb") as f:  # through a Python file, a full disk raises ENOSPC (torch's own writer: a bare
        torch.save(payload, f)  # RuntimeError 'unexpected pos')


def save_atomic(path: str | Path, payload: dict) -> Path:
    return write_atomic(path, lambda tmp: _torch_save(payload, tmp))


class NotOurFile(ConfigError):
    """A file given as one of ours that is not: bad input, said in one line (exit 2)."""


class NotOurFormat(NotOurFile):
    """A readable weight file without our format mark: an official checkpoint, say, which its own readers
    take (`hybrid_distill.weights`, `--arch`)."""


def first_line(err: Exception) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)


def is_zip(path: str | Path) -> bool:
    """torch.save's zip layout (torch >= 1.6); only it can be memory-mapped: a legacy pickle (an official
    checkpoint saved with _use_new_zipfile_serialization=False) is read whole."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read(path: str | Path, formats: tuple[str, ...] = (MODEL_FORMAT, CHECKPOINT_FORMAT), mmap: bool = False) -> dict:
    """One of our files, checked to be of one of `formats`; `mmap`: the tensors stay on disk until used
    (a check that reads the whole file costs no memory)."""
    names = " or ".join(f.replace("hybrid-distill-", "") for f in formats)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip(path))
    except Exception as err:  # torch's zip reader, pickle, safetensors' header parser: each raises its own kind
        raise NotOurFile(f"{path} is not a readable hybrid-distill {names} ({first_line(err)})") from None
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind not in formats:
        raise NotOurFormat(f"{path} is not a hybrid-distill {names} (official teacher files: hybrid_distill.weights)")
    if kind == CHECKPOINT_FORMAT and "model" not in payload:
        raise NotOurFile(f"{path} is a checkpoint of an earlier hybrid-distill layout (no 'model' entry)")
    return payload


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---- checkpoints


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Atomically, then the SHA-256 beside it."""
    path = save_atomic(path, {"format": CHECKPOINT_FORMAT, **payload})
    digest = sha256_file(path) + "\n"
    try:
        write_atomic(_checksum_path(path), lambda tmp: tmp.write_text(digest))
    except DiskFull:
        path.unlink()  # without its checksum it would never be resumed from, only take space
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    return read(path, (CHECKPOINT_FORMAT,))


def has_checksum(path: Path) -> bool:
    return _checksum_path(path).is_file()


def is_complete(path: Path) -> bool:
    checksum = _checksum_path(path)
    return checksum.is_file() and checksum.read_text().strip() == sha256_file(path)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "checkpoints").glob("checkpoint-*.pt"))


def newest_complete(run_dir: Path, warn: bool = True) -> Path | None:
    """The newest checkpoint whose checksum matches; a corrupt newer one is skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        if is_complete(path):
            return path
        if warn:
            warnings.warn(f"checkpoint {path} is truncated or corrupt (checksum mismatch); trying the previous one")
    return None


def newest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run directory, or an error naming the directory."""
    found = newest_complete(Path(run_dir))
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoints/checkpoint-*.pt; pass a checkpoint file")
    return found


def move_aside(path: Path, folder: Path) -> None:
    """A checkpoint and its checksum into `folder`, out of list_checkpoints' sight."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in (path, _checksum_path(path)):
        if file.exists():
            file.replace(folder / file.name)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        _checksum_path(old).unlink(missing_ok=True)


# ---- models


def save_model_file(model: nn.Module, arch: str, model_kwargs: dict, path: str | Path, mean=None, std=None) -> Path:
    """A plain timm model in our own format, atomically."""
    default_mean, default_std = mean_std(model)
    return save_atomic(
        path,
        {
            "format": MODEL_FORMAT,
            "arch": arch,
            "model_kwargs": dict(model_kwargs),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "mean": list(mean or default_mean),
            "std": list(std or default_std),
        },
    )


@dataclass
class OwnModel:
    """A timm ViT as one of our files holds it (a checkpoint's student backbone, or a model file)."""

    arch: str
    model_kwargs: dict
    state_dict: dict
    mean: list | None
    std: list | None
    format: str
    fd_encoder: bool = False  # FD's encoder: timm's ViT with a relative position bias (models/fd_encoder.py)

    def build(self, **model_kwargs) -> nn.Module:
        """The timm model, its weights loaded strictly; `model_kwargs` override the saved ones."""
        model = create_student_vit(self.arch, {**self.model_kwargs, **model_kwargs}, self.fd_encoder)
        model.load_state_dict(self.state_dict, strict=True)
        return set_mean_std(model, self.mean, self.std) if self.mean and self.std else model


def own_model(payload: dict, source: str | Path = "the file") -> OwnModel:
    """A model file or checkpoint payload -> the plain timm backbone it holds (the checkpoint's
    `backbone.` prefix stripped here and nowhere else); `source` names the file in the refusal of one
    without the entries that build it."""
    if payload["format"] == CHECKPOINT_FORMAT:
        cfg = payload.get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("student"), dict) or "arch" not in cfg["student"]:
            raise NotOurFile(
                f"{source} is a hybrid-distill checkpoint without its 'config' (the student's arch and "
                "model_kwargs): pass an intact checkpoint of the run, or its run directory"
            )
        cfg = cfg["student"]
        state = {k[len(BACKBONE) :]: v for k, v in payload["model"].items() if k.startswith(BACKBONE)}
        return OwnModel(
            cfg["arch"],
            dict(cfg.get("model_kwargs") or {}),
            state,
            cfg.get("mean"),
            cfg.get("std"),
            CHECKPOINT_FORMAT,
            bool(cfg.get("fd_encoder", False)),
        )
    missing = [k for k in ("arch", "model_kwargs", "state_dict") if k not in payload]
    if missing:
        raise NotOurFile(
            f"{source} is a hybrid-distill model file without {' and '.join(map(repr, missing))}: write it "
            "again with hybrid_distill.files.save_model_file"
        )
    kwargs, mean, std = payload["model_kwargs"], payload.get("mean"), payload.get("std")
    return OwnModel(payload["arch"], dict(kwargs), payload["state_dict"], mean, std, MODEL_FORMAT)


def read_model(path: str | Path, mmap: bool = False) -> OwnModel:
    """A run directory (its newest complete checkpoint), a checkpoint or a model file."""
    path = Path(path)
    path = newest_checkpoint(path) if path.is_dir() else path
    return own_model(read(path, mmap=mmap), path)


def student_with_decoder(spec: str) -> nn.Module:
    """The student of a run directory or checkpoint with its trained decoder as `model.decoder`."""
    from .models.decoder import decoder_from_checkpoint

    path = Path(spec)
    path = newest_checkpoint(path) if path.is_dir() else path
    payload = read(path, (CHECKPOINT_FORMAT,))
    model = own_model(payload, path).build()
    block = model.blocks[0]
    model.decoder = decoder_from_checkpoint(
        payload,
        model.embed_dim,
        block.attn.num_heads,
        tuple(model.patch_embed.grid_size),
        block.mlp.fc1.out_features / model.embed_dim,
    )
    return model


def model_path(spec: str) -> Path | None:
    """The file or run directory a model spec names, or None when it is a timm name; a spec that looks
    like a path (a weight suffix or a '/') and does not exist is refused."""
    path = Path(spec)
    if path.exists():
        return path
    if path.suffix in {".pt", ".pth", ".safetensors", ".bin"} or "/" in spec:
        raise FileNotFoundError(f"no such model file or run directory: {spec}")
    return None


def load_model(spec: str, pretrained: bool = False, **model_kwargs) -> nn.Module:
    """A backbone from a timm name, one of our model files or checkpoints, or a run directory."""
    path = model_path(spec)
    if path is not None:
        return read_model(path).build()
    return create_vit(spec, pretrained=pretrained, **model_kwargs)
