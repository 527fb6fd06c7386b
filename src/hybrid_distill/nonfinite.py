"""What a run keeps for non-finite steps: copies of its state from before they began, and the names
of what went non-finite.

A diverging run (too high a learning rate) often takes finite but huge steps before the first
non-finite one; the state just before that step is already ruined. So copies are taken every
`every` steps while steps are finite, the last two are kept, and a stop saves the older one: at
least `every` steps before the first non-finite step.
"""

import math

import torch


def detached_copy(value):
    """A deep copy of a state tree whose tensors are cloned to the CPU (live tensors may alias it)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: detached_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached_copy(v) for v in value)
    return value


class GoodStates:
    def __init__(self, every: int):
        self.every, self.kept = every, []

    def keep(self, step: int, streak: int, state) -> None:
        """`state()` is copied at every `every`-th step while no non-finite streak is running."""
        if self.every and not streak and (step % self.every == 0 or not self.kept):
            self.kept = (self.kept + [detached_copy(state())])[-2:]

    def oldest(self) -> dict | None:
        return self.kept[0] if self.kept else None


def _bad(value) -> bool:
    return not math.isfinite(float(value))


def describe(parts: dict, teachers, micro_batches, run) -> str:
    """Names the non-finite values of a skipped step: loss parts, gradient norm, teacher targets
    (the teachers run once more on the step's images: this happens once per streak)."""
    names = [f"loss part '{k}'" for k, v in parts.items() if k not in ("grad_norm", "skipped") and _bad(v)]
    if _bad(parts["grad_norm"]):
        names.append("gradient norm")
    targets = non_finite_targets(teachers, micro_batches, run)
    return ", ".join(names + (targets or ["teacher targets finite"]))


@torch.no_grad()
def non_finite_targets(teachers, micro_batches, run) -> list[str]:
    found = set()
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a random keep set must not shift the run's RNG
        for images in micro_batches:
            found |= _targets_of(teachers, images, run)
    return sorted(found)


def _targets_of(teachers, images, run) -> set[str]:
    from .data.transforms import to_unit

    with run.autocast():
        targets = teachers(to_unit(images.to(run.device)))  # Targets: features and relations by teacher
    found = {f"teacher '{name}' feature target" for name, f in targets.features.items() if not f.isfinite().all()}
    found.update(
        f"teacher '{name}' relation target at block {b}"
        for name, blocks in targets.relations.items()
        for b, r in blocks.items()
        if not r.isfinite().all()
    )
    return found
