"""The bench's variants of the step, as config overrides, and the phases of a step, read from its
profiler ranges.

The optimised step is the trainer's own (`engine.train_step`) on models built from the config with a
variant's overrides (`train.amp`, `train.teacher_precision`, `train.compile`): an ablation is a config
the trainer can run. The plain step is `plain.py`, on the fp32 eager variant's models. A step is timed
from outside; its phases (input, each teacher, student forward, losses, student backward, optimiser)
are the `torch.profiler.record_function` ranges the step opens (engine.py, targets.py, plain.py), read
from the last warm-up step, run under the profiler: CPU time, or on CUDA the kernels' device time.
"""

import time
from dataclasses import dataclass, fields, replace

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile, record_function

from ..engine import param_groups
from .harness import StepRig, sync
from .plain import plain_forward_backward

PHASES = ("input", "student forward", "losses", "student backward", "optimiser")  # and 'teacher <name>'


@dataclass(frozen=True)
class Switches:
    """The optimised step's config choices, each one on its own switch."""

    bf16_teachers: bool = False  # train.teacher_precision=bf16 (targets stay fp32)
    bf16_student: bool = False  # train.amp=bf16: the student's forward and losses under autocast
    compile: bool = False  # train.compile: torch.compile of the student and of each teacher's forward

    def without(self, name: str) -> "Switches":
        return replace(self, **{name: False})

    def on(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]

    def overrides(self) -> list[str]:
        """The config overrides that make this step."""
        return [
            f"train.teacher_precision={'bf16' if self.bf16_teachers else 'fp32'}",
            f"train.amp={'bf16' if self.bf16_student else 'none'}",
            f"train.compile={str(self.compile).lower()}",
        ]


def default_switches(bf16: bool, use_compile: bool) -> Switches:
    return Switches(bf16_teachers=bf16, bf16_student=bf16, compile=use_compile)


def phase_of(name: str) -> bool:
    return name in PHASES or name.startswith("teacher ")


def phase_times(step, device: torch.device) -> dict[str, float]:
    """Seconds per phase of one call of `step`, from the profiler ranges it opens."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    times: dict[str, float] = {}
    for event in prof.events():
        if phase_of(event.name):
            us = event.device_time_total if cuda else event.cpu_time_total
            times[event.name] = times.get(event.name, 0.0) + us / 1e6
    return times


class Bench:
    """One StepRig per variant (the config with its overrides, seeded alike: the same weights), and the
    plain step on the fp32 eager variant's student and teachers."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.rigs: dict[Switches, StepRig] = {}
        self.plain_optimizer: torch.optim.Optimizer | None = None

    def rig(self, sw: Switches) -> StepRig:
        if sw not in self.rigs:
            self.rigs[sw] = StepRig(OmegaConf.merge(self.cfg, OmegaConf.from_dotlist(sw.overrides())), self.device, 1)
        return self.rigs[sw]

    def step(self, sw: Switches | None, images: torch.Tensor, profile: bool = False) -> dict:
        """One training step timed from outside: {'step': seconds} (and 'peak_mib' on CUDA); with
        `profile`, a step run under the profiler instead: {'phases': seconds per phase} (a warm-up)."""
        if profile:
            return {"phases": self.phases(sw, images)}
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(self.device)
        start = time.perf_counter()
        self.run(sw, images)
        sync(self.device)
        times = {"step": time.perf_counter() - start}
        if cuda:
            times["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return times

    def phases(self, sw: Switches | None, images: torch.Tensor) -> dict[str, float]:
        return phase_times(lambda: self.run(sw, images), self.device)

    def run(self, sw: Switches | None, images: torch.Tensor) -> None:
        """sw None: the plain step; else the trainer's engine.train_step on that variant's models."""
        if sw is None:
            self.plain_step(images)
        else:
            self.rig(sw).step(images)

    def plain_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """plain.py's forward and backward, clipping and AdamW's for-loop step."""
        rig = self.rig(Switches())
        parts = plain_forward_backward(rig.student, rig.teachers, images, rig.run)
        with record_function("optimiser"):
            torch.nn.utils.clip_grad_norm_(rig.student.parameters(), rig.run.clip_grad, foreach=False)
            self.plain_adamw(rig).step()
            self.plain_adamw(rig).zero_grad(set_to_none=True)
        return parts

    def plain_adamw(self, rig: StepRig) -> torch.optim.Optimizer:
        if self.plain_optimizer is None:
            groups, betas = param_groups(rig.student, self.cfg.optim.weight_decay), tuple(self.cfg.optim.betas)
            self.plain_optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=betas, foreach=False)
        return self.plain_optimizer
