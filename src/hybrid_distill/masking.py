"""Redundant-token selection (paper 3.2, eq. 4), as pure index maths.

Keep indices always address patch tokens only (0..L-1), sorted ascending; the CLS token is never
scored and always kept (PCAE `forward_teacher`, same authors). Shapes: B batch, L patches,
K kept patches, D width, P prefix tokens.

A selector tells a teacher which patches to keep (`Teacher.forward`): `start(B, L, device)` gives the
keep set before block 0, and `select(block, patches)` narrows it after each block of `select.blocks`,
returning positions within the patches it is shown (those still kept). With `prune`, the teacher then
drops the other tokens from its sequence (PCAE style).
"""

import math

import torch
import torch.nn.functional as F


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """floor(n * ratio), robust to binary rounding (70 * 0.7 is 48.99999999999999 in floats)."""
    return max(1, math.floor(num_tokens * keep_ratio + 1e-6))


def schedule_counts(num_patches: int, keep_ratio: float, num_selections: int) -> list[int]:
    """Token counts through the progressive schedule, e.g. 196 -> 137 -> 95 -> 66 for ViT-B/16."""
    counts = [num_patches]
    for _ in range(num_selections):
        counts.append(num_kept(counts[-1], keep_ratio))
    return counts


def selection_blocks(depth: int) -> list[int]:
    """The paper's I = [0, L/3, 2L/3] (section 4.1), 0-indexed blocks after which tokens are dropped."""
    return sorted({0, depth // 3, 2 * depth // 3})


def redundancy_scores(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, L): dot product of each L2-normalised token with the mean normalised token."""
    unit = F.normalize(tokens.float(), dim=-1)
    return (unit * unit.mean(dim=1, keepdim=True)).sum(dim=-1)


def least_redundant(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L, D) -> (B, k) sorted indices of the k tokens least similar to their mean."""
    return redundancy_scores(tokens).topk(k, dim=1, largest=False).indices.sort(dim=1).values


def redundant_keep_indices(tokens: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """(B, L, D) patch tokens -> (B, floor(L * keep_ratio)) int64 indices of the tokens to keep."""
    return least_redundant(tokens, num_kept(tokens.shape[1], keep_ratio))


def random_keep_indices(batch: int, num_patches: int, k: int, device=None, generator=None) -> torch.Tensor:
    """(B, k) sorted random indices, uniform per image."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :k].sort(dim=1).values


def all_indices(batch: int, num_patches: int, device=None) -> torch.Tensor:
    return torch.arange(num_patches, device=device).expand(batch, num_patches)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, L, D) gathered at (B, K) -> (B, K, D)."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def positions_within(present: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Where each kept index sits in the sorted `present` indices (keep a subset of present)."""
    return torch.searchsorted(present.contiguous(), keep.contiguous())


class KeepLeastRedundant:
    """Paper eq. 4 after each block of `counts` ({block: patches kept after it}), e.g. ViT-B
    {0: 137, 4: 95, 8: 66} (paper 4.1, PCAE); `prune`: later blocks see the kept tokens only."""

    def __init__(self, counts: dict[int, int], prune: bool = False):
        self.counts, self.prune = dict(counts), prune
        self.blocks = tuple(sorted(counts))

    def start(self, batch: int, num_patches: int, device) -> torch.Tensor:
        return all_indices(batch, num_patches, device)

    def __call__(self, block: int, patches: torch.Tensor) -> torch.Tensor:
        return least_redundant(patches, self.counts[block])


class KeepGiven:
    """A keep set (B, K) fixed before the teacher runs: another teacher's choice, or every patch."""

    blocks, prune = (), False

    def __init__(self, keep: torch.Tensor):
        self.keep = keep

    def start(self, batch: int, num_patches: int, device) -> torch.Tensor:
        return self.keep


class KeepRandom:
    """k patches per image, uniformly at random (masking.strategy=random)."""

    blocks, prune = (), False

    def __init__(self, k: int):
        self.k = k

    def start(self, batch: int, num_patches: int, device) -> torch.Tensor:
        return random_keep_indices(batch, num_patches, self.k, device)
