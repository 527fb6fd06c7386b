"""`weights: pretrained` without waiting on a network that is not there.

huggingface_hub retries an unreachable hub for about a minute before it fails, and its error names
neither the teacher nor the way out. Here the cached file is used directly when it is there (no
network call at all), and otherwise one short TCP connect decides: unreachable (or HF_HUB_OFFLINE=1)
ends the run at once with a line that names the teacher and both fixes.
"""

import os
import socket
from urllib.parse import urlparse

import timm

from ..config_schema import ConfigError

CONNECT_TIMEOUT_S = 3.0


class TeacherUnavailable(ConfigError):
    """Pretrained teacher weights that are neither cached nor downloadable."""


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """One TCP connect to the hub's host (HF_ENDPOINT, default huggingface.co:443)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(name: str, arch: str) -> TeacherUnavailable:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return TeacherUnavailable(
        f"teacher '{name}' ({arch}): weights: pretrained needs the Hugging Face hub, which is not reachable "
        f"from here (or HF_HUB_OFFLINE=1), and the weights are not in the cache under HF_HOME={hf_home}. "
        f"Either run `hybrid-distill teachers prefetch {name} --cache DIR` where there is internet, copy DIR "
        f"here and export HF_HOME=DIR HF_HUB_OFFLINE=1, or set weights: /path/to/the/checkpoint"
    )


def known_pretrained(arch: str) -> bool:
    """A timm name whose pretrained config says where its weights live."""
    cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch.split(".")[0]) else None
    return bool(cfg and (cfg.hf_hub_id or cfg.url))
