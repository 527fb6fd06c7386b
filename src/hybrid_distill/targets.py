"""All teachers together: the token picker runs first, the others follow on its keep set."""
import torch
from torch import nn

from .config import Strategy
from .masking import all_indices, random_keep_indices, schedule_counts, selection_blocks
from .models.teacher import Teacher, TeacherOutput


class TeacherSet(nn.Module):
    """images -> {teacher name: TeacherOutput}, every output at the same kept tokens."""

    def __init__(self, teachers: dict[str, Teacher], masking, num_patches: int):
        super().__init__()
        self.teachers = nn.ModuleDict(teachers)
        self.picker = masking.teacher
        self.strategy = Strategy(masking.strategy if masking.teacher else Strategy.none)
        self.prune = bool(masking.prune_teacher)
        self.num_patches = num_patches
        self.select = self.selection_schedule(masking)

    def selection_schedule(self, masking) -> dict[int, int]:
        """Block -> patches kept after it; e.g. ViT-B {0: 137, 4: 95, 8: 66} (paper 4.1, PCAE)."""
        if self.strategy is Strategy.none:
            return {}
        depth = self.teachers[self.picker].depth
        blocks = list(masking.blocks) if masking.blocks is not None else selection_blocks(depth)
        counts = schedule_counts(self.num_patches, masking.keep_ratio, len(blocks))
        if self.strategy is Strategy.last:
            return {blocks[-1]: counts[-1]}
        return dict(zip(blocks, counts[1:]))

    @property
    def num_kept(self) -> int:
        return min(self.select.values()) if self.select else self.num_patches

    def keep_for(self, batch: int, device) -> torch.Tensor | None:
        if self.strategy is Strategy.random:
            return random_keep_indices(batch, self.num_patches, self.num_kept, device)
        if self.strategy is Strategy.none:
            return all_indices(batch, self.num_patches, device)
        return None  # chosen by the picker

    def train(self, mode: bool = True) -> "TeacherSet":
        return super().train(False)

    def cast(self, dtype: torch.dtype) -> "TeacherSet":
        """Teacher weights in `dtype` (bf16 on CUDA halves their time and memory); normalisation and
        targets stay fp32. A config-free switch: targets differ from fp32 ones by bf16 rounding."""
        for teacher in self.teachers.values():
            teacher.model.to(dtype)
        return self

    def compile(self, **kwargs) -> "TeacherSet":
        """torch.compile each teacher's forward in place (its state_dict keeps its keys). The set's own
        forward stays eager: it holds the inference mode and the clones."""
        for teacher in self.teachers.values():
            teacher.compile(**kwargs)
        return self

    def order(self) -> list[str]:
        """The token picker first: the others follow on its keep set."""
        rest = [n for n in self.teachers if n != self.picker]
        return [self.picker] + rest if self.picker in self.teachers else rest

    def forward(self, pixels: torch.Tensor) -> dict[str, TeacherOutput]:
        keep = self.keep_for(pixels.shape[0], pixels.device)
        out = {}
        for name in self.order():
            out[name] = self.run_teacher(name, pixels, keep)
            keep = out[name].keep
        return out

    def run_teacher(self, name: str, pixels: torch.Tensor, keep: torch.Tensor | None) -> TeacherOutput:
        """One teacher under inference mode (no autograd bookkeeping); the picker when keep is None.
        Its outputs are cloned outside inference mode: the loss's backward must be able to save them."""
        teacher = self.teachers[name]
        with torch.inference_mode():
            if keep is None:
                out = teacher(pixels, select=self.select, prune=self.prune)
            else:
                out = teacher(pixels, keep=keep)
        return TeacherOutput(out.keep.clone(), None if out.features is None else out.features.clone(),
                             {spec: rel.clone() for spec, rel in out.relations.items()})
