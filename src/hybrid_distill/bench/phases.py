"""The optimised step, its switches, and timing of every phase of a step (plain or optimised).

Phases: input to the device, each teacher (the picker's time includes the token selection), student
forward, losses, student backward, optimiser. On CUDA every phase boundary synchronises.
"""
import contextlib
import copy
import time
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from ..data.transforms import to_unit
from ..engine import build_optimizer, finish_step, param_groups, set_lr
from ..losses import distill_losses
from ..models.attention import set_fused_attention, student_fused_attention
from ..models.student import Student
from ..targets import TeacherSet
from .plain import plain_forward_backward


@dataclass(frozen=True)
class Switches:
    """The optimisations of the optimised step (issue 7, item 3), each one on its own switch."""
    fused_attention: bool = True  # SDPA everywhere except the blocks whose logits are read
    explicit_student_attention: bool = False  # the student's attention without SDPA (the trainer's choice on CPU)
    trim_teachers: bool = True  # stop after the last needed block, kept rows only after the final selection
    kept_relations: bool = True  # teacher q k^T on CLS + kept rows and columns only
    uint8_input: bool = True  # uint8 to the device, normalisation there (4x less traffic)
    bf16_teachers: bool = False  # teacher weights in bf16 (targets stay fp32)
    bf16_student: bool = False  # student forward and losses under bf16 autocast
    compile_student: bool = False  # torch.compile of the student (forward and backward)
    compile_teachers: bool = False  # torch.compile of each teacher's forward (fused norms, GELU, adds)
    fused_adamw: bool = True  # AdamW(fused=True), as engine.build_optimizer (else foreach)

    def without(self, name: str) -> "Switches":
        return replace(self, **{name: False})

    def on(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


def default_switches(device: torch.device, bf16: bool, use_compile: bool) -> Switches:
    return Switches(bf16_teachers=bf16, bf16_student=bf16, compile_student=use_compile, compile_teachers=use_compile,
                    explicit_student_attention=not student_fused_attention(device))


class Clock:
    """Wall time per phase; synchronises CUDA at every boundary so a phase owns its kernels."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self.last = self.now()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        now = self.now()
        self.times[phase] = self.times.get(phase, 0.0) + now - self.last
        self.last = now


class NullClock:
    def lap(self, phase: str) -> None:
        pass


def optimised_forward_backward(student, teachers: TeacherSet, images: torch.Tensor, run, sw: Switches,
                               clock) -> dict[str, torch.Tensor]:
    """engine.train_step's forward and backward, phase by phase: loss parts, gradients in the student."""
    if sw.uint8_input:
        pixels = to_unit(images.to(run.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
    else:
        pixels = (images.float() / 255.0).to(run.device)
    clock.lap("input")
    keep, targets = teachers.keep_for(pixels.shape[0], pixels.device), {}
    for name in teachers.order():  # TeacherSet.forward, one teacher at a time
        targets[name] = teachers.run_teacher(name, pixels, keep)
        keep = targets[name].keep
        clock.lap(f"teacher {name}")
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16) if sw.bf16_student else contextlib.nullcontext()
    with autocast:
        out = student(pixels, keep)
        clock.lap("student forward")
        parts = distill_losses(out, targets, run.loss_weights, run.beta)
        clock.lap("losses")
    parts["loss"].backward()
    clock.lap("student backward")
    return parts


class Bench:
    """The student, teachers (fp32 and a bf16 copy) and optimisers behind the plain and optimised steps."""

    def __init__(self, student: Student, teachers: TeacherSet, optim_cfg, run):
        self.student, self.teachers, self.run, self.optim_cfg = student, teachers, run, optim_cfg
        self.teacher_copies: dict[tuple[bool, bool], TeacherSet] = {(False, False): teachers}
        self.compiled = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=False)

    def teacher_set(self, bf16: bool, compiled: bool = False) -> TeacherSet:
        """The teachers in fp32 or bf16, eager or compiled: copies, since casting back and forth would
        round the fp32 weights and an in-place compile would reach the eager variants too."""
        key = (bf16, compiled)
        if key not in self.teacher_copies:
            teachers = copy.deepcopy(self.teachers)
            if bf16:
                teachers.cast(torch.bfloat16)
            if compiled:
                teachers.compile()
            self.teacher_copies[key] = teachers
        return self.teacher_copies[key]

    def student_fn(self, compiled: bool):
        if compiled and self.compiled is None:
            self.compiled = torch.compile(self.student)
        return self.compiled if compiled else self.student

    def optimizer(self, kind: str) -> torch.optim.Optimizer:
        """'plain': AdamW's for-loop; 'engine': the training engine's (fused); 'foreach'."""
        if kind not in self.optimizers:
            groups, betas = param_groups(self.student, self.optim_cfg.weight_decay), tuple(self.optim_cfg.betas)
            if kind == "engine":
                opt = build_optimizer(self.student, self.optim_cfg)
                set_lr(opt, 1e-4)
            else:
                opt = torch.optim.AdamW(groups, lr=1e-4, betas=betas, foreach=kind == "foreach")
            self.optimizers[kind] = opt
        return self.optimizers[kind]

    def configure(self, sw: Switches) -> TeacherSet:
        teachers = self.teacher_set(sw.bf16_teachers, sw.compile_teachers)
        set_fused_attention([teachers], sw.fused_attention)
        set_fused_attention([self.student], sw.fused_attention and not sw.explicit_student_attention)
        for t in teachers.teachers.values():
            t.trim, t.kept_relations = sw.trim_teachers, sw.kept_relations
        return teachers

    def forward_backward(self, sw: Switches | None, images: torch.Tensor, clock) -> dict[str, torch.Tensor]:
        """sw None: the plain step."""
        if sw is None:
            return plain_forward_backward(self.student, self.teachers, images, self.run, clock)
        teachers = self.configure(sw)
        return optimised_forward_backward(self.student_fn(sw.compile_student), teachers, images, self.run, sw, clock)

    def step(self, sw: Switches | None, images: torch.Tensor) -> dict[str, float]:
        """One training step; returns seconds per phase (and 'peak_mib' on CUDA)."""
        cuda = self.run.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = Clock(self.run.device)
        parts = self.forward_backward(sw, images, clock)
        if sw is None:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.run.clip_grad, foreach=False)
            opt = self.optimizer("plain")
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            opt = self.optimizer("engine" if sw.fused_adamw else "foreach")
            finish_step(self.student, opt, self.scaler, self.run.clip_grad, parts["loss"])
        clock.lap("optimiser")
        times = dict(clock.times)
        if cuda:
            times["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return times
