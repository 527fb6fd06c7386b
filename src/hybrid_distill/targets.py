"""What the student distils, as one list of `Target`s, and all teachers together giving their values.

The list is built once from the config and the block matching (`matching.match_targets`) and read by
the teachers' side (`TeacherSet`), the student (`models/student.py`) and the losses (`losses.py`);
the values of both sides are keyed by the same `Target`s.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn
from torch.profiler import record_function

from .config_schema import RelationHeads, Strategy
from .masking import KeepGiven, KeepLeastRedundant, KeepRandom, all_indices, schedule_counts, selection_blocks
from .models.teacher import Teacher, TeacherOutput

# the kind of a teacher's features (paper eq. 1, FD): its feature block's tokens after its final norm,
# whitened; the student predicts them from its last block's tokens, or from the block matched to an
# earlier feature block, through its head '<teacher>'
FEATURES = "feat"


@dataclass(frozen=True)
class Target:
    """One target: teacher `teacher`'s `kind` (FEATURES or a `RelationKind`, relations.py) read at its
    block `teacher_block`, matched at student block `student_block` (both resolved, 0-indexed). `head`:
    the width of the student's head for token targets (features, T^i; None: compared as they are);
    `heads`: per-head or head-mean for per-head kinds; `cls`: whether the teacher has a class token (False:
    a block target is read at the kept patches only, models/tokens.py `patches_only`)."""

    teacher: str
    teacher_block: int
    student_block: int
    kind: str  # FEATURES or a RelationKind (a str enum)
    head: int | None = None
    heads: RelationHeads = RelationHeads.per_head
    cls: bool = True

    @property
    def is_features(self) -> bool:
        return self.kind == FEATURES

    @property
    def part(self) -> str:
        """The loss part's name, read by logs, checkpoints and tests: 'sup/feat', 'mim/rel10'."""
        return f"{self.teacher}/feat" if self.is_features else f"{self.teacher}/rel{self.teacher_block}"

    @property
    def head_name(self) -> str:
        """The key of the student's head (its state_dict names: heads.sup.*, heads.mim_block10.*)."""
        return self.teacher if self.is_features else f"{self.teacher}_block{self.teacher_block}"

    def value(self, out: TeacherOutput) -> torch.Tensor:
        """This target's tensor in its teacher's output."""
        return out.features if self.is_features else out.relations[self.teacher_block]


def features_of(values: dict[Target, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """teacher -> its features (B, 1 + K, D_t): a read-only view by teacher for readers (analysis,
    tests); `values` is what the loss reads."""
    return MappingProxyType({t.teacher: v for t, v in values.items() if t.is_features})


def relations_of(values: dict[Target, torch.Tensor]) -> Mapping[str, Mapping[int, torch.Tensor]]:
    """teacher -> teacher block -> its block target: a read-only view by teacher for readers."""
    out: dict[str, dict[int, torch.Tensor]] = {}
    for t, v in values.items():
        if not t.is_features:
            out.setdefault(t.teacher, {})[t.teacher_block] = v
    return MappingProxyType({name: MappingProxyType(blocks) for name, blocks in out.items()})


class ByTarget:
    """Read-only views by teacher over `values` ({Target: tensor}): the teachers' targets and the student's
    predictions of them are keyed alike."""

    values: dict[Target, torch.Tensor]

    @property
    def features(self) -> Mapping[str, torch.Tensor]:
        return features_of(self.values)

    @property
    def relations(self) -> Mapping[str, Mapping[int, torch.Tensor]]:
        return relations_of(self.values)


@dataclass
class Targets(ByTarget):
    """What the student distils in one step, every tensor at CLS + the same kept patches."""

    keep: torch.Tensor  # (B, K) kept patch indices
    values: dict[Target, torch.Tensor] = field(default_factory=dict)  # (B, 1 + K, D_t), (B, H, 1+K, 1+K), ...

    def add(self, name: str, out: TeacherOutput, targets: list[Target]) -> None:
        """Teacher `name`'s values of the targets in the list that are its own."""
        self.values.update({t: t.value(out) for t in targets if t.teacher == name})


class TeacherSet(nn.Module):
    """images -> Targets. Outputs need no grad: the teachers are frozen (no parameter requires grad)
    and run under torch.no_grad; their outputs go to the loss as they are, with no copies.
    `targets`: the list the student matches (`matching.match_targets`)."""

    def __init__(self, teachers: dict[str, Teacher], masking, num_patches: int, targets: list[Target] = ()):
        super().__init__()
        self.teachers = nn.ModuleDict(teachers)
        self.masking = masking
        self.picker = masking.teacher
        self.strategy = masking.strategy if masking.teacher else Strategy.none
        self.num_patches = num_patches
        self.schedule = self.selection_schedule(masking)
        self.targets = list(targets)

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

    def compile(self, **kwargs) -> "TeacherSet":
        """torch.compile each teacher's forward in place (its state_dict keeps its keys)."""
        for teacher in self.teachers.values():
            teacher.compile(**kwargs)
        return self

    def normalizer_state(self) -> dict[str, dict]:
        """Teacher -> its target normaliser's statistics (models/phis.py): saved in checkpoints, so a
        resumed run normalises as the run it continues."""
        return {n: t.target_norm.state_dict() for n, t in self.teachers.items() if t.target_norm is not None}

    def load_normalizer_state(self, state: dict[str, dict]) -> None:
        for name, values in state.items():
            self.teachers[name].target_norm.load_state_dict(values)

    def normalizer_log(self) -> dict[str, float]:
        """'<teacher>/target_scale': the scale a teacher's targets are divided by (PHI-S's alpha)."""
        norms = {n: t.target_norm for n, t in self.teachers.items() if t.target_norm is not None}
        return {f"{n}/target_scale": norm.scale() for n, norm in norms.items()}

    def order(self) -> list[str]:
        """The token picker first: the others follow on its keep set."""
        rest = [n for n in self.teachers if n != self.picker]
        return [self.picker] + rest if self.picker in self.teachers else rest

    def forward(self, pixels: torch.Tensor) -> Targets:
        """Each teacher in a profiler range 'teacher <name>' (free when no profiler runs; the bench reads it)."""
        select = self.selector(pixels.shape[0], pixels.device)
        targets = None
        for name in self.order():
            with record_function(f"teacher {name}"):
                out = self.teachers[name](pixels, select)
            targets = targets or Targets(out.keep)
            targets.add(name, out, self.targets)
            select = KeepGiven(out.keep)
        return targets
