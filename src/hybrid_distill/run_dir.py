"""One owner per run directory.

A run holds `RUN_DIR/.lock` (host, pid, SLURM job) for its lifetime, created with O_EXCL so that of
two runs started at once with the same name exactly one wins. A lock is stale when its owner is
gone: the same host and a dead pid, our own pid, or the same SLURM job (a requeued job keeps its id
and may land on another node). A fresh run (no --resume) into a directory that already holds a run
is refused: its checkpoints would be pruned against the old ones and `--resume auto` would later
pick the old run.
"""

import json
import os
import socket
from pathlib import Path

from .config_schema import ConfigError
from .files import disk_full, is_no_space

LOCK = ".lock"


class RunDirError(ConfigError):
    """The run directory belongs to another run, said in one line with the way out."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # half-written by an owner killed while writing it: treated as stale below


def is_stale(owner: dict) -> bool:
    me = _me()
    if not owner.get("pid") or owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
        return True
    if owner.get("slurm_job") and owner.get("slurm_job") == me["slurm_job"]:
        return True
    return owner.get("host") == me["host"] and not _alive(int(owner["pid"]))


def check_owner(run_dir: Path) -> None:
    owner = read_owner(run_dir)
    if owner is not None and not is_stale(owner):
        raise RunDirError(
            f"{run_dir} is in use by pid {owner['pid']} on {owner.get('host')}: wait for that run, "
            f"start this one with another name=, or delete {Path(run_dir) / LOCK} if that run is gone"
        )


def check_fresh(run_dir: Path, resume: str | None) -> None:
    """A run without --resume starts only in an empty or new directory."""
    run_dir = Path(run_dir)
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK) if run_dir.is_dir() else []
    if resume is None and held:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(held[:4])}): continue it with --resume auto, "
            "or start a new run with another name="
        )


def check_available(run_dir: Path, resume: str | None) -> None:
    """Read-only checks before anything is built or written."""
    check_owner(run_dir)
    check_fresh(run_dir, resume)


class RunLock:
    """`with RunLock(run_dir):` the directory is ours until the block ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_owner(self.path.parent)
                if owner is None or is_stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                check_owner(self.path.parent)
                continue
            self._write_owner(fd)
            return self
        check_owner(self.path.parent)  # lost a race twice: name the winner
        raise RunDirError(f"could not lock {self.path}; retry")

    def _write_owner(self, fd: int) -> None:
        """The owner into the new lock; on a full disk the lock goes again (an empty one would look stale
        to this run but hold others off until then) and the error names the folder and its free space."""
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
        except OSError as err:
            self.path.unlink(missing_ok=True)
            if is_no_space(err):
                raise disk_full(self.path.parent) from None
            raise

    def __exit__(self, *exc) -> None:
        if read_owner(self.path.parent) == _me():
            self.path.unlink(missing_ok=True)
