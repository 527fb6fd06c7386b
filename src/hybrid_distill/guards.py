"""What stops a run cleanly: preemption signals, non-finite steps in a row, too much unreadable data.

Exit codes of `hybrid-distill train` (documented in README):
  0   finished
  2   bad input, found before training
  3   stopped by a guard: too many non-finite steps in a row, or too many unreadable samples
  75  preempted (SIGTERM / SIGUSR1): a checkpoint was written; requeue and it resumes by itself
"""
import signal
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_GUARD = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"


class StopTraining(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (collective)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Preemption:
    """SIGTERM (sent by SLURM / Kubernetes before a kill) and SIGUSR1 (`sbatch --signal=USR1@120`)
    ask the run to finish its step, save and exit with EXIT_PREEMPTED."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested, self.previous = False, {}
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread (a notebook worker, say): no signal handling there
            pass

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def should_stop(self) -> bool:
        return _any_rank(self.requested)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class NonFiniteGuard:
    def __init__(self, limit: int):
        self.limit, self.in_row, self.total = limit, 0, 0

    def update(self, skipped: bool, step: int) -> None:
        self.in_row = self.in_row + 1 if skipped else 0
        self.total += int(skipped)
        if self.limit and self.in_row >= self.limit:
            raise StopTraining(f"{self.in_row} non-finite steps in a row up to step {step}: the last good state "
                               "is saved; lower optim.blr, raise optim.clip_grad or check the data", EXIT_GUARD)


class BadSamples:
    """Counts unreadable samples per epoch, lists their paths in bad_samples.txt, stops above a fraction."""

    def __init__(self, run_dir: Path, name_of, max_fraction: float, write: bool):
        self.path, self.name_of, self.max_fraction, self.write = Path(run_dir) / "bad_samples.txt", name_of, max_fraction, write
        self.seen, self.bad = 0, []

    def update(self, bad: torch.Tensor) -> None:
        self.seen += bad.numel()
        self.bad += [int(i) for i in bad[bad >= 0]]

    def end_epoch(self, epoch: int) -> dict:
        counts = torch.tensor([len(self.bad), self.seen], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(counts)
        bad, seen = int(counts[0]), int(counts[1])
        if self.write and self.bad:
            with open(self.path, "a") as f:
                f.writelines(f"epoch {epoch}\t{self.name_of(i)}\n" for i in self.bad)
        self.seen, self.bad = 0, []
        if seen and bad / seen > self.max_fraction:
            raise StopTraining(f"{bad} of {seen} samples ({100 * bad / seen:.1f}%) of epoch {epoch} were unreadable, "
                               f"above data.max_bad_fraction={self.max_fraction}; see {self.path}, then fix the data "
                               "or raise data.max_bad_fraction", EXIT_GUARD)
        return {"bad_samples": bad, "samples": seen}
