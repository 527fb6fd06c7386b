"""Checkpoints: student, heads, optimiser, scaler, step, RNG states and config; never teacher weights.

Written atomically (temp file, fsync, rename) so a crash never leaves a half file under the real
name; every value is a tensor or a builtin so `torch.load(weights_only=True)` reads it.
"""
import hashlib
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from .models.load import CHECKPOINT_FORMAT


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]),
            "python": _python_rng()}


def _python_rng() -> dict:
    version, state, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, payload: dict) -> Path:
    """Temp file + fsync + rename, then the SHA-256 beside it: a checkpoint without a matching
    checksum was cut short (preempted while writing, disk full) and is never resumed from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _checksum_path(path).write_text(sha256_file(path) + "\n")
    return path


def has_checksum(path: Path) -> bool:
    return _checksum_path(path).is_file()


def is_complete(path: Path) -> bool:
    checksum = _checksum_path(path)
    return checksum.is_file() and checksum.read_text().strip() == sha256_file(path)


def load_checkpoint(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hybrid-distill checkpoint")
    return payload


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
