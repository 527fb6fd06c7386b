"""The one checker of a config, run by every command before anything is built or written: the table
of ranges, the checks between fields, then the models' architectures and block indices (from models
built on the meta device: no memory, no init). Each failure is one line naming the key and the fix,
raised as ConfigError. A command's own flags go through the same `check_ranges` with their own table.
"""

import functools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config_schema import ConfigError, DecoderKind, MaskStyle, Strategy, TargetNorm
from .models.load import create_vit
from .relations import resolve_block
from .runtime import pick_device
from .validate import run_name, timm_arch, writable_dir
from .weights.teachers import resolve_arch


@dataclass(frozen=True)
class Range:
    """low <= value <= high (either bound optional, either open); a float must also be finite: NaN compares
    false with every bound and inf passes every lower one."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT = Range(0), Range(1), Range(0, low_open=True), Range(0, 1)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")

# key -> its range, or its allowed values; `*` is any teacher; a list's rule holds for each element.
# Enums and types are OmegaConf's to check; the teachers' and student's block indices depend on their
# models (check_models).
RANGES: dict[str, Range | tuple] = {
    "seed": Range(0, 2**32, high_open=True),
    "data.num_samples": AT_LEAST_0,
    "data.img_size": AT_LEAST_1,
    "data.crop_scale": Range(0, 1, low_open=True),
    "data.hflip": UNIT,
    "data.interpolation": INTERPOLATIONS,
    "data.limit": AT_LEAST_0,
    "data.synthetic_size": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.prefetch_factor": AT_LEAST_1,
    "data.max_bad_fraction": UNIT,
    "data.bad_check_every": AT_LEAST_1,
    "student.drop_path": UNIT,
    "student.mean": Range(),
    "student.std": POSITIVE,
    "student.decoder_depth": AT_LEAST_0,
    "student.mask_recon.ratio": Range(0, 1, low_open=True, high_open=True),
    "student.mask_recon.patch": AT_LEAST_1,
    "teachers.*.weight": AT_LEAST_0,
    "masking.keep_ratio": Range(0, 1, low_open=True),
    "loss.beta": POSITIVE,
    "optim.batch_size": AT_LEAST_1,
    "optim.blr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": Range(0, 1, high_open=True),
    "optim.warmup_epochs": AT_LEAST_0,
    "optim.min_lr": AT_LEAST_0,
    "optim.clip_grad": AT_LEAST_0,
    "optim.accum_steps": AT_LEAST_1,
    "train.epochs": AT_LEAST_1,
    "train.max_steps": AT_LEAST_0,
    "train.log_every": AT_LEAST_1,
    "train.ckpt_every_steps": AT_LEAST_0,
    "train.keep_checkpoints": AT_LEAST_0,
    "train.monitor_every": AT_LEAST_0,
    "train.monitor_images": AT_LEAST_1,
    "train.max_nonfinite_steps": AT_LEAST_0,
    "train.good_state_every": AT_LEAST_0,
}
LENGTHS = {"data.crop_scale": 2, "student.mean": 3, "student.std": 3, "optim.betas": 2}


def check(cfg: DictConfig) -> None:
    """Everything a config can be checked for before a model is built: every command calls this (through
    `config.load_config` and `config.from_dict`)."""
    check_finite(OmegaConf.to_container(cfg))  # a missing value stays '???' here: check_fields names it
    check_ranges(cfg, RANGES, LENGTHS)
    check_fields(cfg)
    check_student_variant(cfg)
    run_name(cfg.name)
    writable_dir("output_dir", cfg.output_dir)
    micro_batch(cfg.optim.batch_size, cfg.optim.accum_steps, int(os.environ.get("WORLD_SIZE", "1")))
    pick_device(cfg.train.device, "train.device")
    check_models(cfg)


def check_finite(node, key: str = "") -> None:
    """No NaN or inf anywhere, the models' keyword arguments included."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} must be a finite number")
    if isinstance(node, Mapping):
        for name, value in node.items():
            check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{key}[{i}]")


def check_ranges(values: Mapping, table: Mapping[str, Range | tuple], lengths: Mapping[str, int] | None = None) -> None:
    """Every value `table` names in range; None means unset and is skipped. `values` is a config or a
    command's flags as a mapping ({'--k': 20})."""
    lengths = lengths or {}
    for pattern, rule in table.items():
        for key, value in entries(values, pattern.split("."), ""):
            if pattern in lengths and len(value) != lengths[pattern]:
                raise ConfigError(f"{key}={list(value)} must hold {lengths[pattern]} values")
            is_list = isinstance(value, (list, tuple)) or OmegaConf.is_list(value)
            for i, item in enumerate(value) if is_list else [(None, value)]:
                in_range(key if i is None else f"{key}[{i}]", item, rule)


def check_flags(args, table: Mapping[str, Range | tuple]) -> None:
    """A command's flags against its table; argparse keeps `--crop-pct` as `args.crop_pct`."""
    check_ranges({flag: getattr(args, flag.lstrip("-").replace("-", "_")) for flag in table}, table)


def entries(node, parts: list[str], prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each value a pattern such as `teachers.*.weight` names in `node`."""
    if not parts:
        yield prefix, node
        return
    head, rest = parts[0], parts[1:]
    for name in node.keys() if head == "*" else [head]:
        if name in node and node[name] is not None:
            yield from entries(node[name], rest, f"{prefix}.{name}" if prefix else str(name))


def in_range(key: str, value, rule: Range | tuple) -> None:
    if isinstance(rule, tuple):
        if value not in rule:
            raise ConfigError(f"{key}={value} is not one of {', '.join(map(str, rule))}")
    elif not rule.holds(value):
        finite = "" if not isinstance(value, float) or math.isfinite(value) else "a finite number "
        raise ConfigError(f"{key}={value} must be {finite}{rule}")


def check_fields(cfg: DictConfig) -> None:
    """What one value cannot say alone: targets, the picker, orders, settings that exclude each other."""
    for name, t in cfg.teachers.items():
        if OmegaConf.is_missing(t, "arch"):
            raise ConfigError(f"teachers.{name}.arch is missing: set a timm name, e.g. vit_base_patch16_224.mae")
        if not t.features and not t.relation_blocks:
            raise ConfigError(f"teachers.{name} gives no target: set features=true or relation_blocks=[-3,-2]")
        if TargetNorm(t.normalize) is not TargetNorm.none and (t.whiten or not t.features):
            raise ConfigError(
                f"teachers.{name}.normalize={TargetNorm(t.normalize).value} standardises feature targets "
                f"in place of whitening: set teachers.{name}.features=true and teachers.{name}.whiten=false"
            )
        check_interpolation(cfg, name, t)
    picker = cfg.masking.teacher
    if picker is not None and picker not in cfg.teachers:
        raise ConfigError(f"masking.teacher='{picker}' is not a teacher; choose one of {sorted(cfg.teachers)} or null")
    low, high = cfg.data.crop_scale
    if low > high:
        raise ConfigError(f"data.crop_scale={list(cfg.data.crop_scale)} must be ordered within (0, 1], e.g. [0.2, 1.0]")
    if cfg.train.fsdp and cfg.train.compile:
        raise ConfigError("train.compile is not supported with train.fsdp yet: set train.compile=false, or use DDP")
    if cfg.train.fsdp and cfg.train.monitor_every:
        raise ConfigError("train.monitor_every reads unsharded weights: set train.monitor_every=0 with train.fsdp=true")


def check_interpolation(cfg: DictConfig, name: str, t) -> None:
    """Interpolated feature maps are targets for the student's tokens, not tokens to pick or relate."""
    if not t.interpolate_features:
        return
    fix = f"set teachers.{name}.match_grid=true (its input resized to the student's grid) instead"
    if t.match_grid:
        raise ConfigError(f"teachers.{name}.interpolate_features=true needs teachers.{name}.match_grid=false")
    if cfg.masking.teacher == name:
        raise ConfigError(f"masking.teacher='{name}' would pick tokens on another grid than the student's: {fix}")
    if t.relation_blocks:
        raise ConfigError(f"teachers.{name}.relation_blocks relate tokens of another grid than the student's: {fix}")


def check_student_variant(cfg: DictConfig) -> None:
    """The section-2 variants together: decoders, mask feature reconstruction (paper 2.2-2.4)."""
    s, recon = cfg.student, cfg.student.mask_recon
    if DecoderKind(s.decoder) is DecoderKind.blocks and s.decoder_depth < 1:
        raise ConfigError(f"student.decoder_depth={s.decoder_depth} must be >= 1 with student.decoder=blocks")
    if MaskStyle(recon.style) is MaskStyle.none:
        return
    if MaskStyle(recon.style) is MaskStyle.dbot and DecoderKind(s.decoder) is not DecoderKind.blocks:
        raise ConfigError("student.mask_recon.style=dbot feeds mask tokens to a decoder: set student.decoder=blocks")
    if cfg.masking.teacher is not None and Strategy(cfg.masking.strategy) is not Strategy.none:
        raise ConfigError("student.mask_recon masks its own tokens: set masking.teacher=null (no token selection)")
    for name, t in cfg.teachers.items():
        if t.relation_blocks:
            raise ConfigError(
                f"student.mask_recon reconstructs features only (paper 2.4): teachers.{name} "
                "gives relations; set its relation_blocks=[] or student.mask_recon.style=none"
            )


def micro_batch(batch_size: int, accum_steps: int, world: int) -> int:
    """Images per rank per forward pass: the global batch splits evenly over ranks and accumulation steps."""
    per = world * accum_steps
    if batch_size % per:
        raise ConfigError(f"optim.batch_size={batch_size} is not divisible by world size x optim.accum_steps = {per}")
    return batch_size // per


@functools.lru_cache(maxsize=256)
def _meta_shape(arch: str, kwargs_json: str) -> tuple[int, tuple[int, int] | None] | None:
    """(blocks, input size; None when any size is taken) of a ViT built on the meta device (None: not a
    ViT); cached because building one costs about 0.5 s and a config asks for the same model several
    times (student, teachers, matching)."""
    with torch.device("meta"):
        model = create_vit(arch, **json.loads(kwargs_json))
    if not hasattr(model, "blocks"):
        return None
    dynamic = getattr(model, "dynamic_img_size", False) or getattr(model.patch_embed, "img_size", None) is None
    return len(model.blocks), None if dynamic else tuple(model.patch_embed.img_size)


def _plain(value):
    """JSON for the config's own containers; anything else is refused by json (and so reaches timm as given)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value)
    raise TypeError(f"{type(value).__name__} is not a config value")


def shape_of(key: str, arch: str, model_kwargs: dict) -> tuple[int, tuple[int, int] | None]:
    """(blocks, input size or None) of the ViT `arch` would build."""
    timm_arch(key, arch)
    try:
        shape = _meta_shape(arch, json.dumps(dict(model_kwargs), sort_keys=True, default=_plain))
    except Exception as err:  # timm rejects kwargs with TypeError, AssertionError, ValueError, ...
        raise ConfigError(
            f"{key.rsplit('.', 1)[0]}.model_kwargs={model_kwargs}: timm cannot build {arch} "
            f"with them ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if shape is None:
        raise ConfigError(f"{key}={arch} is not a ViT (no transformer blocks); use a vit_* timm name")
    return shape


def check_image_size(cfg: DictConfig, size: tuple[int, int] | None) -> None:
    """The crops are data.img_size square and the student takes only its own input size: a mismatch
    would pass every check and the summary, then fail in the first step's patch embedding."""
    if size is not None and size != (cfg.data.img_size, cfg.data.img_size):
        given = "student.model_kwargs.img_size" if "img_size" in cfg.student.model_kwargs else cfg.student.arch
        raise ConfigError(
            f"data.img_size={cfg.data.img_size} does not match the student's input size "
            f"{'x'.join(map(str, size))} ({given}): set data.img_size={size[0]}, or "
            f"student.model_kwargs.img_size={cfg.data.img_size} for a student at that size"
        )


def check_models(cfg: DictConfig) -> None:
    """Architectures exist and every block index lies within its model."""
    kwargs = {"drop_path_rate": cfg.student.drop_path, **cfg.student.model_kwargs}
    check_image_size(cfg, shape_of("student.arch", cfg.student.arch, kwargs)[1])
    depths = {}
    for name, t in cfg.teachers.items():
        key = f"teachers.{name}"
        arch = resolve_arch(t.arch)
        depths[name] = shape_of(f"{key}.arch", arch, dict(t.model_kwargs))[0]
        resolve_block(t.feature_block, depths[name], f"{key}.feature_block")
        for b in t.relation_blocks:
            resolve_block(b, depths[name], f"{key}.relation_blocks")
    picker = cfg.masking.teacher
    for b in cfg.masking.blocks if picker is not None and cfg.masking.blocks is not None else []:
        in_range("masking.blocks", b, Range(0, depths[picker] - 1))
