"""What a run needs besides models and data: the device, the precision, seeding and the step's context."""
import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from .config import Amp, ConfigError


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def amp_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    if amp is Amp.auto:
        return torch.bfloat16 if device.type == "cuda" else None
    return {Amp.bf16: torch.bfloat16, Amp.fp16: torch.float16, Amp.none: None}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
