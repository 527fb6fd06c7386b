"""Checkpoints: student, heads, optimiser, scaler, step, RNG states and config; never teacher weights.

Written atomically (temp file, fsync, rename) so a crash never leaves a half file under the real
name; every value is a tensor or a builtin so `torch.load(weights_only=True)` reads it.
"""
import os
import random
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


def save_checkpoint(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hybrid-distill checkpoint")
    return payload


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "checkpoints").glob("checkpoint-*.pt"))


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """'auto': the newest checkpoint of this run (None when there is none); else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"--resume {resume}: no checkpoints/checkpoint-*.pt in that run directory")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file (use --resume auto for the newest)")
    return path


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
