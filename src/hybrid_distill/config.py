"""Loading a config: defaults (`config_schema.py`) <- YAML file (with its `base:` files, `config_yaml.py`) <-
dotted overrides, typed by OmegaConf and checked (`config_check.py`) in one call.

`load_config(path, overrides)` fails on an unknown key or a wrong type with one line naming the valid
choices. Users may import the config's types from here too; the package's own modules import them from
`config_schema`, which imports nothing of the package.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import config_schema
from .config_check import check
from .config_schema import Config, ConfigError
from .config_yaml import read_yaml, yaml_mapping

__all__ = ["check", "from_dict", "load_config", "merge", "read_yaml", "resolve", "to_dict", "to_yaml", "yaml_mapping"]


def __getattr__(name: str):
    """The config's types (`from hybrid_distill.config import TeacherConfig`) are config_schema's (PEP 562)."""
    return getattr(config_schema, name)


def _one_line(err: OmegaConfBaseException) -> str:
    return str(err).split("\n")[0] + (f" (at '{err.full_key}')" if getattr(err, "full_key", None) else "")


def _valid_keys(node: Any, key: str) -> list[str]:
    parts = key.split(".")[:-1]
    for part in parts:
        node = node.get(part) if isinstance(node, DictConfig) and part in node else None
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (TypeError, ValueError) as err:  # e.g. optim.betas.5=0.1: a key into a list
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        valid = _valid_keys(base, key)
        hint = f"; valid keys there: {', '.join(valid)}" if valid and "not in" in str(err) else ""
        raise ConfigError(f"{where}: {_one_line(err)}{hint}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: Config | None = None
) -> DictConfig:
    """Defaults <- YAML file <- `key=value` overrides, typed and checked."""
    cfg = OmegaConf.structured(base or Config())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for the shipped experiments)")
        cfg = merge(cfg, read_yaml(path), str(path))  # with its `base:` files first
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.blr=1e-4)")
        cfg = merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    resolve(cfg)
    check(cfg)
    return cfg


def resolve(cfg: DictConfig) -> None:
    """Interpolations (`${oc.env:HOME}`, `${optim.blr}`) resolved in place before the checks, so that they check
    the values a run will use: one that cannot be resolved is bad input."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "a value"
        raise ConfigError(f"{key}: cannot resolve its interpolation ({_one_line(err).split(' full_key')[0]})") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: DictConfig) -> dict:
    """Plain containers (enums as their values) for checkpoints and JSON."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def from_dict(values: dict, where: str = "config") -> DictConfig:
    """Defaults <- a nested dict (programmatic experiments such as the demo), typed and checked."""
    cfg = merge(OmegaConf.structured(Config()), values, where)
    check(cfg)
    return cfg
