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

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> dict[str, TeacherOutput]:
        keep = self.keep_for(pixels.shape[0], pixels.device)
        out = {}
        if keep is None:
            out[self.picker] = self.teachers[self.picker](pixels, select=self.select, prune=self.prune)
            keep = out[self.picker].keep
        for name, teacher in self.teachers.items():
            if name not in out:
                out[name] = teacher(pixels, keep=keep)
        return out
