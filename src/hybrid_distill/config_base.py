"""Experiment YAML files that build on another: `base: other.yaml` (a path relative to the file, or
a list of them, merged in order) is read first and this file is merged over it with OmegaConf's own
merge, so a variant of a shipped config is the few lines that differ from it."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

BASE_KEY = "base"


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """The file merged over its bases (recursively); the `base` key itself is dropped."""
    from .config import ConfigError

    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(p.name for p in seen)})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for the shipped experiments)")
    from .config import yaml_mapping

    node = OmegaConf.create(yaml_mapping(path))  # not YAML, or not a mapping: one line
    bases = node.pop(BASE_KEY, None) if isinstance(node, DictConfig) else None
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, (list, tuple)) or OmegaConf.is_list(bases)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"{path}: base={bases!r} must be a file name or a list of them (e.g. base: hybrid_vitb_mae_clip.yaml)"
        )
    bases = list(bases)
    merged = [read_yaml(path.parent / base, seen + (path,)) for base in bases]
    return OmegaConf.merge(*merged, node)
