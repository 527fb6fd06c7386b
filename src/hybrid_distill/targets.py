"""All teachers together: the token picker runs first, the others follow on its keep set."""

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .config_schema import Strategy, TeacherPrecision
from .masking import KeepGiven, KeepLeastRedundant, KeepRandom, all_indices, schedule_counts, selection_blocks
from .models.teacher import Teacher
from .models.tokens import grid_size


@dataclass
class Targets:
    """What the student distils in one step, every tensor at CLS + the same kept patches."""

    keep: torch.Tensor  # (B, K) kept patch indices
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B, 1 + K, D_t)
    relations: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # teacher -> block -> (B, H, 1+K, 1+K)


def _no_lap(phase: str) -> None:
    pass


class TeacherSet(nn.Module):
    """images -> Targets. Outputs need no grad: the teachers are frozen (no parameter requires grad)
    and run under torch.no_grad; their outputs go to the loss as they are, with no copies."""

    def __init__(self, teachers: dict[str, Teacher], masking, num_patches: int):
        super().__init__()
        self.teachers = nn.ModuleDict(teachers)
        self.masking = masking
        self.picker = masking.teacher
        self.strategy = masking.strategy if masking.teacher else Strategy.none
        self.num_patches = num_patches
        self.schedule = self.selection_schedule(masking)

    def selection_schedule(self, masking) -> dict[int, int]:
        """Block -> patches kept after it; e.g. ViT-B {0: 137, 4: 95, 8: 66} (paper 4.1, PCAE), `last` {11: 66}."""
        if self.strategy is Strategy.none:
            return {}
        depth = self.teachers[self.picker].depth
        blocks = list(masking.blocks) if masking.blocks is not None else selection_blocks(depth)
        counts = schedule_counts(self.num_patches, masking.keep_ratio, len(blocks))
        if self.strategy is Strategy.last:
            # Table 8 "direct": "generates token mask at the last layer", one selection after the
            # picker's final block, to the progressive schedule's final count (66 of 196 for ViT-B/16)
            return {depth - 1: counts[-1]}
        return dict(zip(blocks, counts[1:]))

    @property
    def num_kept(self) -> int:
        return min(self.schedule.values()) if self.schedule else self.num_patches

    def selector(self, batch: int, device):
        """The picker's selector for this strategy (masking.py)."""
        if self.strategy is Strategy.random:
            return KeepRandom(self.num_kept)
        if self.strategy is Strategy.none:
            return KeepGiven(all_indices(batch, self.num_patches, device))
        return KeepLeastRedundant(self.schedule, bool(self.masking.prune_teacher))

    def train(self, mode: bool = True) -> "TeacherSet":
        return super().train(False)

    @property
    def precision(self):
        """The teachers' precision (models/precision.py), the same for all of them."""
        return next(iter(self.teachers.values())).precision

    def copy(self, fused_attention: bool | None = None, precision=None) -> "TeacherSet":
        """New teachers on copies of these weights with another attention path or precision (constructor
        arguments: nothing is switched in place), on the same device. Only fp32 teachers are copied: a cast
        rounds, and FP8 weights cannot be cast back."""
        if self.precision is not TeacherPrecision.fp32:
            raise ValueError(
                f"TeacherSet.copy needs fp32 teachers, these are {self.precision.value}: copy the "
                "fp32 set and ask for the precision"
            )
        built = {
            n: Teacher(
                n,
                t.cfg,
                copy.deepcopy(t.model),
                grid_size(t.model),
                t.fused_attention if fused_attention is None else fused_attention,
                t.precision if precision is None else precision,
            )
            for n, t in self.teachers.items()
        }
        return TeacherSet(built, self.masking, self.num_patches)

    def compile(self, **kwargs) -> "TeacherSet":
        """torch.compile each teacher's forward in place (its state_dict keeps its keys)."""
        for teacher in self.teachers.values():
            teacher.compile(**kwargs)
        return self

    def order(self) -> list[str]:
        """The token picker first: the others follow on its keep set."""
        rest = [n for n in self.teachers if n != self.picker]
        return [self.picker] + rest if self.picker in self.teachers else rest

    def forward(self, pixels: torch.Tensor, lap=_no_lap) -> Targets:
        """`lap(phase)` is called after each teacher (the bench's clock)."""
        select = self.selector(pixels.shape[0], pixels.device)
        targets = None
        for name in self.order():
            out = self.teachers[name](pixels, select)
            targets = targets or Targets(out.keep)
            if out.features is not None:
                targets.features[name] = out.features
            if out.relations:
                targets.relations[name] = out.relations
            select = KeepGiven(out.keep)
            lap(f"teacher {name}")
        return targets
