"""What a run needs besides models and data: the device, the precision, seeding and the step's context."""

import contextlib
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from .config_schema import Amp, ConfigError


@dataclass
class RunContext:
    """What the step needs besides models and data."""

    device: torch.device
    amp_dtype: torch.dtype | None
    loss_weights: dict[str, float]
    beta: float
    clip_grad: float

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def pick_device(name: str | torch.device, key: str = "train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N as a torch device (auto: CUDA when present); a CUDA device only where one
    is visible. `key` is the setting or flag that named it, for the error's one line."""
    name = str(name)
    if not DEVICE.fullmatch(name):
        raise ConfigError(f"{key}={name} is not a device: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if name.startswith("cuda") else 0
    if name.startswith("cuda") and int(name.partition(":")[2] or 0) >= count:
        raise ConfigError(f"{key}={name} but {count} CUDA device(s) are visible: use {key}=cpu or auto")
    return torch.device(name)


def amp_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    if amp is Amp.auto:
        return torch.bfloat16 if device.type == "cuda" else None
    return {Amp.bf16: torch.bfloat16, Amp.fp16: torch.float16, Amp.none: None}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as tensors and builtins (a checkpoint's 'rng', weights_only-loadable)."""
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
