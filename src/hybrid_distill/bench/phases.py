"""The optimised step's switches, the models each needs, and timing of every phase of a step.

The optimised step is the trainer's own (`engine.forward_backward`, `engine.optimizer_step`) with a
clock around it; the plain step is `plain.py`. Phases: input to the device, each teacher (the
picker's time includes the token selection), student forward, losses, student backward, optimiser.
On CUDA every phase boundary synchronises.
"""

import copy
import time
from dataclasses import dataclass, fields, replace

import torch

from ..config_schema import TeacherPrecision
from ..data.transforms import to_unit
from ..engine import build_optimizer, forward_backward, optimizer_step, param_groups, set_lr
from ..models.attention import student_fused_attention
from ..models.student import Student
from ..targets import TeacherSet
from .plain import plain_forward_backward


@dataclass(frozen=True)
class Switches:
    """The optimisations of the optimised step, each one on its own switch."""

    fused_attention: bool = True  # SDPA everywhere except the blocks whose logits are read
    explicit_student_attention: bool = False  # the student's attention without SDPA (the trainer's choice on CPU)
    uint8_input: bool = True  # uint8 to the device, normalisation there (4x less traffic)
    bf16_teachers: bool = False  # teacher weights in bf16 (targets stay fp32)
    bf16_student: bool = False  # student forward and losses under bf16 autocast
    compile_student: bool = False  # torch.compile of the student (forward and backward)
    compile_teachers: bool = False  # torch.compile of each teacher's forward (fused norms, GELU, adds)
    cuda_graphs: bool = False  # the compiled student with mode="reduce-overhead" (CUDA graphs, static shapes)
    fused_adamw: bool = True  # AdamW(fused=True), as engine.build_optimizer (else foreach)

    def without(self, name: str) -> "Switches":
        return replace(self, **{name: False})

    def on(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]

    @property
    def student_fused(self) -> bool:
        return self.fused_attention and not self.explicit_student_attention


def default_switches(device: torch.device, bf16: bool, use_compile: bool) -> Switches:
    return Switches(
        bf16_teachers=bf16,
        bf16_student=bf16,
        compile_student=use_compile,
        compile_teachers=use_compile,
        explicit_student_attention=not student_fused_attention(device),
    )


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


def student_variant(student: Student, fused_attention: bool) -> Student:
    """The same student (a copy of its weights) built with the other attention path."""
    mean, std = student.normalize.mean.flatten().tolist(), student.normalize.std.flatten().tolist()
    heads = {name: head.out_features for name, head in student.heads.items()}
    specs = [spec for spec, _ in student.relation_specs]
    new = Student(
        copy.deepcopy(student.backbone), mean, std, heads, specs, student.activation_checkpointing, fused_attention
    )
    new.heads.load_state_dict(student.heads.state_dict())
    return new.to(next(student.parameters()).device).train(student.training)


class Bench:
    """The student, teachers (fp32 and a bf16 copy) and optimisers behind the plain and optimised steps."""

    def __init__(self, student: Student, teachers: TeacherSet, optim_cfg, run):
        self.student, self.teachers, self.run, self.optim_cfg = student, teachers, run, optim_cfg
        self.teacher_copies: dict[tuple[bool, bool, bool], TeacherSet] = {
            (teachers.teachers[teachers.order()[0]].fused_attention, False, False): teachers
        }
        self.students: dict[bool, Student] = {}
        self.compiled: dict[tuple[int, str], torch.nn.Module] = {}
        self.optimizers: dict[tuple[str, int], torch.optim.Optimizer] = {}
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=False)

    def teacher_set(self, sw: Switches) -> TeacherSet:
        """The teachers as `sw` asks: copies, since casting back and forth would round the fp32
        weights and an in-place compile would reach the eager variants too."""
        key = (sw.fused_attention, sw.bf16_teachers, sw.compile_teachers)
        if key not in self.teacher_copies:
            teachers = self.teachers.copy(
                sw.fused_attention, TeacherPrecision.bf16 if sw.bf16_teachers else TeacherPrecision.fp32
            )
            if sw.compile_teachers:
                teachers.compile()
            self.teacher_copies[key] = teachers
        return self.teacher_copies[key]

    def student_for(self, sw: Switches) -> Student:
        """The bench's student, or a copy built with the attention path `sw` asks for."""
        if sw.student_fused == self.student.fused_attention:
            return self.student
        if sw.student_fused not in self.students:
            self.students[sw.student_fused] = student_variant(self.student, sw.student_fused)
        return self.students[sw.student_fused]

    def student_fn(self, sw: Switches):
        """The student `sw` asks for, eager or compiled per torch.compile mode (one compilation each)."""
        student = self.student_for(sw)
        if not sw.compile_student:
            return student
        key = (id(student), "reduce-overhead" if sw.cuda_graphs else "default")
        if key not in self.compiled:
            self.compiled[key] = torch.compile(student, mode=key[1])
        if sw.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's outputs are consumed
        return self.compiled[key]

    def optimizer(self, kind: str, student: Student) -> torch.optim.Optimizer:
        """'plain': AdamW's for-loop; 'engine': the training engine's (fused); 'foreach'."""
        key = (kind, id(student))
        if key not in self.optimizers:
            groups, betas = param_groups(student, self.optim_cfg.weight_decay), tuple(self.optim_cfg.betas)
            if kind == "engine":
                opt = build_optimizer(student, self.optim_cfg)
                set_lr(opt, 1e-4)
            else:
                opt = torch.optim.AdamW(groups, lr=1e-4, betas=betas, foreach=kind == "foreach")
            self.optimizers[key] = opt
        return self.optimizers[key]

    def forward_backward(self, sw: Switches | None, images: torch.Tensor, clock) -> dict[str, torch.Tensor]:
        """sw None: the plain step; else the trainer's engine.forward_backward with the clock's laps."""
        if sw is None:
            return plain_forward_backward(self.student, self.teachers, images, self.run, clock)
        if sw.uint8_input:
            pixels = to_unit(images.to(self.run.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
        else:
            pixels = (images.float() / 255.0).to(self.run.device)
        clock.lap("input")
        ctx = replace(self.run, amp_dtype=torch.bfloat16 if sw.bf16_student else None)
        return forward_backward(self.student_fn(sw), self.teacher_set(sw), pixels, ctx, lap=clock.lap)

    def step(self, sw: Switches | None, images: torch.Tensor) -> dict[str, float]:
        """One training step; returns seconds per phase (and 'peak_mib' on CUDA)."""
        cuda = self.run.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = Clock(self.run.device)
        parts = self.forward_backward(sw, images, clock)
        if sw is None:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.run.clip_grad, foreach=False)
            opt = self.optimizer("plain", self.student)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            student = self.student_for(sw)
            opt = self.optimizer("engine" if sw.fused_adamw else "foreach", student)
            optimizer_step(student, opt, self.scaler, self.run.clip_grad, parts["loss"])
        clock.lap("optimiser")
        times = dict(clock.times)
        if cuda:
            times["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return times
