"""What produced a result: git SHA, package versions, host. Saved beside every number."""

import importlib.metadata
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("torch", "torchvision", "timm", "numpy", "omegaconf", "hybrid-distill")


def git_sha(cwd: Path | None = None) -> str:
    """The checkout's HEAD, with '-dirty' when tracked files changed; 'unknown' outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


_LOADED_FROM = git_sha()  # the commit whose code this process imported: a long run (a study) records it, not
# whatever the checkout holds when a result is written hours later


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux); bf16 speed
    differs several-fold between CPU models, so every figure names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    import torch

    return {
        "git_sha": _LOADED_FROM,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "cpu": cpu_model(),
    }
