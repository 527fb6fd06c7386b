"""Checks of what a config or a command names outside itself: output folders, run names, weight files,
model specs and timm names. Each failure is one line naming the key (or flag) and the fix, raised as
ConfigError, which every command turns into exit code 2. Ranges of values: `config_check.py`.
"""

import os
from pathlib import Path

from omegaconf import DictConfig

from .config_schema import ConfigError
from .files import model_path, newest_complete


def writable_dir(key: str, path: str | Path) -> None:
    """The folder exists and is writable, or can be made: its nearest existing ancestor is a
    writable folder (not a file), outside the system's device and kernel folders."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={path}: {existing} is a file, not a folder; choose another {key}")
    if is_system_folder(existing):
        raise ConfigError(f"{key}={path}: {existing} holds the system's devices or kernel state; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {existing} is not writable; choose a folder you can write to")


SYSTEM_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))
RAM_DISK = Path("/dev/shm")


def is_system_folder(folder: Path) -> bool:
    """Root may write into /dev (a RAM file system on Linux), where a file is lost at reboot and its name
    may be a device's (/dev/full); /dev/shm is the RAM disk people do write to."""
    real = folder.resolve()
    inside = [real, *real.parents]
    return any(s in inside for s in SYSTEM_FOLDERS) and RAM_DISK not in inside


def writable_target(key: str, path: str | Path) -> None:
    """A file or folder a command writes: the nearest existing folder at or above where it goes passes
    writable_dir, and a refusal names the path as given (--out=/dev/full.pth, not /dev)."""
    path = Path(path)
    writable_dir(key, path if path.is_dir() or not path.exists() else path.parent)


def writable_file(key: str, path: str | Path) -> None:
    """A file a command writes: not an existing folder (writing there fails only after the work)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key} {path} is a folder; name a file in it, e.g. {key} {path / 'result.json'}")
    writable_target(key, path)


def run_name(name: str) -> None:
    """One plain path component, so the run stays inside output_dir."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable():
        raise ConfigError(
            f"name={name!r} must be one folder name (printable, no '/', not '.' or '..'): runs stay inside output_dir"
        )
    if len(name.encode()) > 200:
        raise ConfigError(
            f"name={name[:20]}... is {len(name.encode())} bytes long; a folder name takes at most 200 "
            "here (255 on most file systems, less the suffixes added to it)"
        )


def weight_file_problem(path: Path) -> str | None:
    """What is wrong with a weight file, judged from its first bytes: torch zip, legacy torch pickle
    or safetensors (8-byte little-endian header length, then a JSON header)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): the download or copy was cut short"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None
    if len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return None
    return f"is not a weight file ({size} bytes that are neither a torch zip archive, a torch pickle nor safetensors)"


def weight_file(key: str, path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}={path}: no such file")
    if path.is_dir():
        if newest_complete(path) is None:
            raise ConfigError(
                f"{key}={path}: a folder without complete checkpoints/checkpoint-*.pt; "
                "pass a weight file or a run directory"
            )
        return
    problem = weight_file_problem(path)
    if problem:
        raise ConfigError(f"{key}={path} {problem}; pass a .pth/.pt/.safetensors weight file")


def model_spec(key: str, spec: str) -> None:
    """A run directory, one of our files, or a timm name: checked without loading it."""
    try:
        path = model_path(spec)
    except FileNotFoundError:
        raise ConfigError(f"{key}={spec}: no such model file or run directory") from None
    if path is None:
        timm_arch(key, spec)
    else:
        weight_file(key, path)


def timm_arch(key: str, arch: str) -> None:
    import timm

    if not timm.is_model(arch.split(".")[0]):
        close = timm.list_models(f"*{arch.split('.')[0].split('_')[0]}*")[:5]
        raise ConfigError(f"{key}={arch}: unknown timm model; close names: {close} (see timm.list_models())")


def check_teacher_files(cfg: DictConfig) -> None:
    """Teacher weight files readable: checked when a run starts, not when its config is made (a
    study writes configs before it trains their teachers)."""
    for name, t in cfg.teachers.items():
        if t.weights not in ("pretrained", "random"):
            weight_file(f"teachers.{name}.weights", t.weights)
