"""The model that `eval` and `analyze` read, from what the user names.

- a run directory, checkpoint or model file of ours;
- an official weight file (MAE `{'model': ...}`, DeiT with its head, DINO, OpenAI CLIP, open_clip, ...)
  with `--arch TIMM_NAME`, loaded through `hybrid_distill.weights` as the teachers are;
- a timm name: with `--pretrained` its released weights, read as a teacher's are (offline: from the
  cache `hybrid-distill teachers prefetch` fills, or one line saying so); without it a random init,
  said loudly on stderr.
"""

import contextlib
import sys

from torch import nn

from ..config_schema import ConfigError
from ..files import NotOurFormat, load_model, model_path, read_model
from ..models.load import create_vit
from ..weights import build_teacher_backbone
from ..weights.teachers import resolve_arch


def random_weights_warning(name: str) -> str:
    return (
        f"WARNING: {name} has RANDOM weights (a timm name without --pretrained): the numbers below "
        "measure a random init; add --pretrained for its released weights"
    )


@contextlib.contextmanager
def arch_hint(spec: str):
    """A readable file that is not ours is an official checkpoint, read with --arch."""
    try:
        yield
    except NotOurFormat:
        raise ConfigError(
            f"{spec} is not a hybrid-distill file; for an official checkpoint (MAE, DeiT, DINO, "
            "CLIP, ...) name its timm arch, e.g. --arch vit_base_patch16_224.mae"
        ) from None


def check_model_file(spec: str, arch: str | None = None) -> None:
    """A file or run directory named without --arch is one of ours: read through before any data is,
    memory-mapped (no weights loaded), so a file cut down or lying is named before anything runs."""
    path = model_path(spec)
    if path is not None and not arch:
        with arch_hint(spec):
            read_model(path, mmap=True)


def official_model(path, arch: str, model_kwargs: dict) -> nn.Module:
    """An official weight file, read as a teacher's is; one it cannot read, or that does not fit --arch, is
    bad input (models/teacher.py says the same of a teacher's)."""
    try:
        return build_teacher_backbone(resolve_arch(arch), file=path, model_kwargs=model_kwargs)[0]
    except ValueError as err:
        where = "" if str(path) in str(err) else f"{path}: "
        raise ConfigError(f"--arch {arch}: {where}{err}") from None


def load_eval_model(
    spec: str, arch: str | None = None, pretrained: bool = False, warn=None, **model_kwargs
) -> nn.Module:
    """A timm ViT (no classifier) from a file, a run directory or a timm name; see the module doc."""
    warn = warn or (lambda text: print(text, file=sys.stderr))
    path = model_path(spec)
    if path is not None:
        if arch:
            return official_model(path, arch, model_kwargs)
        with arch_hint(spec):
            return load_model(spec)
    name = resolve_arch(spec)
    if pretrained:
        return build_teacher_backbone(name, pretrained=True, model_kwargs=model_kwargs)[0]
    warn(random_weights_warning(name))
    return create_vit(name, **model_kwargs)
