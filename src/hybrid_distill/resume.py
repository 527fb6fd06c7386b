"""Which checkpoint a run resumes from, verified before anything is built or written.

A resume never silently starts over: `--resume auto` on a run whose checkpoints are all corrupt
stops; an explicit file is checksum-verified (when its .sha256 is beside it) and must load; a
checkpoint whose student does not fit the config is named with what changed.
"""

import warnings
from pathlib import Path

import torch

from . import files
from .config_schema import ConfigError
from .validate import weight_file_problem


class ResumeError(ConfigError):
    """The checkpoint to resume from is missing, corrupt or of another architecture."""


def resolve(resume: str | None, run_dir: Path, flag: str = "--resume") -> Path | None:
    """'auto': the newest complete checkpoint of this run, None when the run has none yet; a run
    directory: its newest complete one; else a checkpoint file. `flag` names the option in refusals."""
    if not resume:
        return None
    if resume == "auto" or Path(resume).is_dir():
        where = Path(run_dir) if resume == "auto" else Path(resume)
        found, saved = files.newest_complete(where, warn=False), files.list_checkpoints(where)
        if found is None and not saved and resume != "auto":
            raise ResumeError(f"{flag} {resume}: no checkpoints/checkpoint-*.pt in that run directory")
        if found is None and saved:
            raise ResumeError(
                f"{flag} {resume}: none of the {len(saved)} checkpoint(s) in {where / 'checkpoints'} is "
                f"complete (checksum mismatch or missing); pass an intact one with {flag} FILE, or "
                "start a new run with another name="
            )
        if found is not None and found != saved[-1]:
            warnings.warn(
                f"{len(saved) - saved.index(found) - 1} newer checkpoint(s) in {where / 'checkpoints'} "
                f"are truncated or corrupt (checksum mismatch); resuming from {found.name}"
            )
        return found
    path = Path(resume)
    if not path.is_file():
        newest = " (use --resume auto for the newest)" if flag == "--resume" else ""
        raise ResumeError(f"{flag} {resume}: no such checkpoint file{newest}")
    problem = weight_file_problem(path)
    if problem:
        raise ResumeError(f"{flag} {resume} {problem}; pass a checkpoint-*.pt of a run")
    if files.has_checksum(path) and not files.is_complete(path):
        raise ResumeError(
            f"{flag} {resume}: the file does not match its checksum {path.name}.sha256 "
            "(truncated or corrupt); pass an intact checkpoint"
        )
    return path


def resolve_init(source: str | None, resume: str | None) -> Path | None:
    """--init-from: a run directory or one of its checkpoints, read through (memory-mapped) before
    anything is built. A model file holds a backbone without the run's heads and config: a teacher's
    weights, not a run to start from."""
    if not source:
        return None
    if resume:
        raise ConfigError("--init-from starts a new run and --resume continues one: give one of them")
    path = resolve(source, Path(source), "--init-from")
    try:
        kind = files.read(path, mmap=True)["format"]
    except files.NotOurFile as err:
        raise ResumeError(f"--init-from {err}") from None
    if kind == files.MODEL_FORMAT:
        raise ResumeError(
            f"--init-from {source} is a model file, not a run: pass a run directory or one of its "
            f"checkpoint-*.pt; a model file teaches as a teacher (teachers.NAME.weights={source})"
        )
    return path


def load(path: Path) -> dict:
    try:
        return files.load_checkpoint(path)
    except Exception as err:  # truncated zip, not a pickle, not ours: one line, whatever torch raises
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ResumeError(f"--resume {path}: not a readable hybrid-distill checkpoint ({reason})") from None


def _changes(saved: dict, cfg) -> list[str]:
    now = {
        "student.arch": cfg.student.arch,
        "student.model_kwargs": dict(cfg.student.model_kwargs),
        "teachers": sorted(cfg.teachers),
    }
    then = {
        "student.arch": saved["student"]["arch"],
        "student.model_kwargs": saved["student"]["model_kwargs"],
        "teachers": sorted(saved.get("teachers", {})),
    }
    return [f"{k} {then[k]} -> {now[k]}" for k in now if then[k] != now[k]]


def check_fits(state: dict, student: torch.nn.Module, cfg, path: Path) -> None:
    """The checkpoint's student and heads have this student's parameter names and shapes."""
    want = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state["model"].items()}  # Student.state_dict() as saved
    if want == have:
        return
    changed = _changes(state.get("config", {}), cfg) if "config" in state else []
    first = next(k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k))
    what = "; ".join(changed) or f"{first}: {have.get(first)} in the file, {want.get(first)} now"
    raise ResumeError(
        f"--resume {path}: the checkpoint's student has another architecture ({what}); resume "
        "with the config it was trained with, or start a new run with another name="
    )
