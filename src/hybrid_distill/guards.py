"""What stops a run cleanly: preemption signals, non-finite steps in a row, too much unreadable data.

Exit codes of `hybrid-distill train` (documented in README):
  0   finished
  2   bad input, found before training
  3   stopped by a guard: too many non-finite steps in a row, or too many unreadable samples
  4   a distributed run lost one of its processes: nothing new was saved; resume from the last checkpoint
  75  preempted (SIGTERM / SIGUSR1): a checkpoint was written; requeue and it resumes by itself
  130 interrupted (Ctrl-C): the step finished and a checkpoint was written; a second Ctrl-C aborts at once
"""

import atexit
import multiprocessing
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_GUARD = 3
EXIT_LOST_RANK = 4  # not 75: no checkpoint is written at the stop, and a rank that dies again would loop a requeue
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a Ctrl-C


class StopTraining(Exception):
    """`save`: whether the trainer saves its state before stopping (nothing to save, or no safe
    state to save, otherwise)."""

    def __init__(self, message: str, exit_code: int, save: bool = True):
        super().__init__(message)
        self.exit_code, self.save = exit_code, save


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (collective)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Preemption:
    """SIGTERM (sent by SLURM / Kubernetes before a kill) and SIGUSR1 (`sbatch --signal=USR1@120`)
    ask the run to finish its step, save and exit with EXIT_PREEMPTED; a first Ctrl-C (SIGINT) does the
    same and exits with EXIT_INTERRUPTED, a second one aborts at once. SLURM signals the whole process
    group, a terminal's Ctrl-C too: loader workers ignore all three (`ignore_preemption_signals`), so the
    main process alone decides, at a step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested, self.interrupted, self.previous = False, False, {}
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        except ValueError:  # not the main thread (a notebook worker, say): no signal handling there
            pass

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def _interrupt(self, signum, frame) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.interrupted = self.requested = True
        print(
            "\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def should_stop(self) -> bool:
        return _any_rank(self.requested)

    def stopped(self, where: str, save: bool = True) -> StopTraining:
        """The StopTraining this signal asks for, its message saying `where` and how to resume."""
        what, code = (
            ("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
            if self.interrupted
            else ("preempted by a signal", EXIT_PREEMPTED)
        )
        return StopTraining(f"{what} {where}; resume with --resume auto (exit code {code})", code, save=save)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: a signal to the process group must not kill the workers before
    the main process has saved (it would die of 'DataLoader worker ... killed by signal')."""
    for s in (*Preemption.SIGNALS, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def kill_workers_at_exit() -> None:
    """At exit multiprocessing stops daemonic children with SIGTERM, which the workers now ignore,
    and then waits for them: this runs first (atexit is last-in, first-out) and sends SIGKILL,
    after taking back SIGCHLD from torch's loader (which would report the deaths as errors)."""
    global _KILL_REGISTERED
    if not _KILL_REGISTERED:
        atexit.register(_kill_children)
        _KILL_REGISTERED = True


def _kill_children() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        child.kill()


_KILL_REGISTERED = False


def worker_killed(err: BaseException, batches) -> bool:
    """A loader worker died of a signal: the job is being torn down, as by a preemption. The main
    process sees it as a RuntimeError from torch's SIGCHLD handler or as a broken pipe, depending
    on when; the workers' exit codes (negative: the signal) tell for sure."""
    workers = getattr(batches, "_workers", [])  # torch's multi-process loader iterator
    if any(w.exitcode is not None and w.exitcode < 0 for w in workers):
        return True
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err) and "killed by signal" in str(err)


def lost_rank(rank: int, world: int, checkpoint: Path | None) -> StopTraining:
    """The stop of a rank whose collective failed because another rank is gone: its state cannot be
    gathered any more (a collective), so nothing is saved; the run resumes from its last checkpoint."""
    others = f"rank {1 - rank}" if world == 2 else f"one of the other {world - 1} ranks"
    last = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
    return StopTraining(
        f"rank {rank}: lost contact with the other processes ({others} died, hung or was killed?); {last}; "
        f"resume with --resume auto (exit code {EXIT_LOST_RANK})",
        EXIT_LOST_RANK,
        save=False,
    )


class NonFiniteStop(StopTraining):
    """Non-finite steps in a row: the trainer saves the last good state, not the current one."""


class NonFiniteGuard:
    def __init__(self, limit: int):
        self.limit, self.in_row, self.total = limit, 0, 0
        self.first, self.what = 0, ""  # first step of the current streak, and what went non-finite there

    def update(self, skipped: bool, step: int, what=lambda: "") -> None:
        """`what` names the non-finite values; called at the first step of a streak only."""
        if skipped and not self.in_row:
            self.first, self.what = step, what()
        self.in_row = self.in_row + 1 if skipped else 0
        self.total += int(skipped)
        if self.limit and self.in_row >= self.limit:
            raise NonFiniteStop(
                f"{self.in_row} non-finite steps in a row up to step {step}, the first at step "
                f"{self.first} ({self.what}); lower optim.blr, raise optim.clip_grad or check the "
                "data, then resume with --resume auto --allow-config-change",
                EXIT_GUARD,
            )


class BadSamples:
    """Unreadable samples of the current epoch, counted as they come and kept in checkpoints; the
    fraction is checked every `every` steps and at the epoch's end, so a broken dataset stops the run
    early, and a resumed run keeps the verdict. Their names go to bad_samples.txt at the epoch's end
    or at the stop."""

    def __init__(self, run_dir: Path, name_of, max_fraction: float, every: int, write: bool):
        self.path, self.name_of, self.write = Path(run_dir) / "bad_samples.txt", name_of, write
        self.max_fraction, self.every = max_fraction, every
        self.epoch, self.seen, self.bad, self.written = 0, 0, [], 0
        self.failed = False  # the verdict, kept in checkpoints: a resumed run stops again

    def update(self, bad: torch.Tensor, step: int) -> None:
        self.seen += bad.numel()
        self.bad += [int(i) for i in bad[bad >= 0]]
        if step % self.every == 0:
            self.check()

    def totals(self) -> tuple[int, int]:
        counts = torch.tensor([len(self.bad), self.seen], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(counts)
        return int(counts[0]), int(counts[1])

    def check(self) -> dict:
        bad, seen = self.totals()
        if seen and bad / seen > self.max_fraction:
            self.failed = True
            self.report(say=False)  # the stop's own line says it
            raise StopTraining(
                f"{bad} of {seen} samples ({100 * bad / seen:.1f}%) read so far in epoch {self.epoch} "
                f"were unreadable, above data.max_bad_fraction={self.max_fraction}; see {self.path}, "
                "then fix the data or raise data.max_bad_fraction",
                EXIT_GUARD,
            )
        return {"bad_samples": bad, "samples": seen}

    def report(self, say: bool = True, counts: tuple[int, int] | None = None) -> None:
        """The new names into the file and, with `counts` (all ranks' bad and seen), one console line."""
        if self.write and len(self.bad) > self.written:
            with open(self.path, "a") as f:
                f.writelines(f"epoch {self.epoch}\t{self.name_of(i)}\n" for i in self.bad[self.written :])
        if self.write and say and counts and counts[0]:
            print(
                f"epoch {self.epoch}: {counts[0]} of {counts[1]} images unreadable, each replaced by the next "
                f"readable one; names in {self.path}",
                file=sys.stderr,
                flush=True,
            )
        self.written = len(self.bad)

    def end_epoch(self, epoch: int) -> dict:
        counts = self.check()
        self.report(counts=(counts["bad_samples"], counts["samples"]))
        self.epoch, self.seen, self.bad, self.written = epoch + 1, 0, [], 0
        return counts

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "seen": self.seen,
            "bad": list(self.bad),
            "written": self.written,
            "failed": self.failed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seen, self.bad, self.written = (
            state["epoch"],
            state["seen"],
            list(state["bad"]),
            state["written"],
        )
        self.failed = state["failed"]
