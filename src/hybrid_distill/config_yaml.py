"""Experiment YAML files read strictly: duplicate keys refused, alias bombs refused, a mapping or one line
saying why not. A file may build on others: `base: other.yaml` (a path relative to the file, or a list of
them, merged in order) is read first and this file is merged over it with OmegaConf's own merge, so a
variant of a shipped config is the few lines that differ from it."""

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from .config_schema import ConfigError

BASE_KEY = "base"
MAX_NODES = 100_000  # a config has hundreds; YAML aliases can make a few lines expand to billions


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys in a mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{twice}' appears twice in one mapping", node.start_mark
            )
        return super().construct_mapping(node, deep)


def check_size(value, path: Path) -> None:
    """Refuse a document whose aliases expand past MAX_NODES (the 'billion laughs'): PyYAML shares the
    aliased objects, but every later copy (OmegaConf's) would expand them."""
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(
                f"{path} expands to more than {MAX_NODES:,} values (YAML aliases repeating aliases?); "
                "write the settings out"
            )
        stack.extend(node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())


def yaml_mapping(path: Path) -> dict:
    """The experiment file as a mapping; not YAML, or YAML that is not a mapping, fails in one line."""
    try:
        values = yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"{path} is not valid YAML{line}: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} holds a YAML {type(values).__name__}, not a mapping of settings (e.g. 'optim: {{blr: 1e-4}}')"
        )
    check_size(values, path)
    return values


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """The file merged over its bases (recursively); the `base` key itself is dropped."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(p.name for p in seen)})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for the shipped experiments)")
    node = OmegaConf.create(yaml_mapping(path))  # not YAML, or not a mapping: one line
    bases = node.pop(BASE_KEY, None) if isinstance(node, DictConfig) else None
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, (list, tuple)) or OmegaConf.is_list(bases)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"{path}: base={bases!r} must be a file name or a list of them (e.g. base: hybrid_vitb_mae_clip.yaml)"
        )
    merged = [read_yaml(path.parent / base, seen + (path,)) for base in list(bases)]
    return OmegaConf.merge(*merged, node)
