"""Typed configuration: defaults in one place (these dataclasses), experiments as YAML diffs.

Defaults are the paper's ViT-B setting (section 4.1) with dBOT / FD defaults where the paper is
silent; each such field names its source. Teachers are listed by each experiment file.
`load_config(path, overrides)` merges defaults <- YAML <- dotted overrides and fails on an
unknown key or a wrong type with one line naming the valid choices.
"""
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class Strategy(str, Enum):
    progressive = "progressive"  # paper 3.2, eq. 4
    last = "last"                # select once at the last block of the schedule (paper Table 8)
    random = "random"
    none = "none"


class RelationKind(str, Enum):
    raw = "raw"          # q k^T (paper eq. 2 as written)
    scaled = "scaled"    # q k^T * hd^-0.5, the logits the teacher's softmax sees (default)
    softmax = "softmax"  # attention probabilities


class RelationHeads(str, Enum):
    per_head = "per_head"
    head_mean = "head_mean"  # for students whose head count differs from the teacher's


class Amp(str, Enum):
    auto = "auto"  # bf16 on CUDA, fp32 on CPU
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | tar | wds | fashion_mnist | synthetic | other timm reader spec ('hfds/...')
    path: Optional[str] = None  # root folder (train split under it, or the split folder itself); wds: shard urls
    num_samples: int = 0  # wds: samples in the shards (defines the epoch length)
    split: str = "train"
    img_size: int = 224
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])  # dBOT / MAE RandomResizedCrop
    hflip: float = 0.5
    interpolation: str = "bicubic"
    limit: int = 0  # use only the first N samples (0: all)
    synthetic_size: int = 512  # images in the synthetic dataset
    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    max_bad_fraction: float = 0.1  # stop when more of an epoch's samples than this are unreadable
    bad_check_every: int = 50  # steps between checks of the unreadable fraction (and at each epoch's end)


@dataclass
class StudentConfig:
    arch: str = "vit_base_patch16_224"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (img_size, patch_size, depth, ...)
    drop_path: float = 0.2  # dBOT --drop_path for ViT-B
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class TeacherConfig:
    arch: str = "???"  # timm name
    weights: str = "pretrained"  # 'pretrained' (timm / HF hub), 'random' (tests only), or a file path
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    match_grid: bool = True  # resize the input (pos-embed interpolated) so the token grid equals the student's
    weight: float = 1.0  # multiplies every loss part of this teacher (paper alpha for the MIM teacher)
    features: bool = False  # distil this teacher's features at feature_block (paper eq. 3, T_c)
    feature_block: int = -1  # -1: last block
    final_norm: bool = True  # teacher's own final norm on the target (FD PRED_FEAT_AFTERNORM)
    whiten: bool = True  # per-token LayerNorm without affine on the target (FD ln_tgt)
    relation_blocks: List[int] = field(default_factory=list)  # e.g. [-3, -2]: paper's layers L-2, L-1
    relation_kind: RelationKind = RelationKind.scaled
    relation_heads: RelationHeads = RelationHeads.per_head


@dataclass
class MaskingConfig:
    teacher: Optional[str] = None  # name of the teacher that picks tokens (the MIM teacher); None: keep all
    strategy: Strategy = Strategy.progressive
    keep_ratio: float = 0.7  # per selection: 196 -> 137 -> 95 -> 66 (PCAE)
    blocks: Optional[List[int]] = None  # None: [0, L/3, 2L/3] (paper 4.1)
    prune_teacher: bool = False  # run the MIM teacher's later blocks on kept tokens only (PCAE style)


@dataclass
class LossConfig:
    beta: float = 2.0  # smooth-L1 beta (dBOT, FD)


@dataclass
class OptimConfig:
    batch_size: int = 1024  # global batch (paper 4.1)
    blr: float = 1.5e-4  # lr = blr * batch_size / 256 = 6e-4 (paper 4.1)
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # dBOT main_pretrain.py
    warmup_epochs: float = 40.0  # dBOT
    min_lr: float = 0.0
    clip_grad: float = 3.0  # dBOT
    accum_steps: int = 1


@dataclass
class TrainConfig:
    epochs: int = 300  # paper 4.1, ViT-B on IN-1K
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    device: str = "auto"  # auto | cpu | cuda
    amp: Amp = Amp.auto
    activation_checkpointing: bool = False  # recompute student blocks in backward (ViT-L/H memory)
    fsdp: bool = False  # shard the student with FSDP2 (fully_shard per block) instead of DDP, for ViT-L/H
    compile: bool = False  # torch.compile the student and each teacher in place (first steps compile; bench)
    log_every: int = 20
    ckpt_every_steps: int = 0  # 0: once per epoch
    keep_checkpoints: int = 3
    monitor_every: int = 0  # attention distance / NMI of the student every N steps (0: off)
    monitor_images: int = 16  # size of the fixed probe batch (the first images of the dataset)
    max_nonfinite_steps: int = 10  # save and stop after this many skipped non-finite steps in a row
    good_state_every: int = 100  # steps between in-memory copies of the state saved when non-finite steps stop
    # a run (two full copies of student + optimiser in host memory; 0: off, the current state is saved)
    progress: bool = True
    tensorboard: bool = True


@dataclass
class Config:
    name: str = "hybrid"
    output_dir: str = "runs"  # the run goes to output_dir/name
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: Dict[str, TeacherConfig] = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A config problem, said in one line with the fix."""


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
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        valid = _valid_keys(base, key)
        hint = f"; valid keys there: {', '.join(valid)}" if valid and "not in" in str(err) else ""
        raise ConfigError(f"{where}: {_one_line(err)}{hint}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: Config | None = None) -> DictConfig:
    """Defaults <- YAML file <- `key=value` overrides, typed and checked."""
    cfg = OmegaConf.structured(base or Config())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for the shipped experiments)")
        cfg = merge(cfg, read_yaml(path), str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.blr=1e-4)")
        cfg = merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    check(cfg)
    return cfg


def read_yaml(path: Path) -> dict:
    """The experiment file as a mapping; not YAML, or YAML that is not a mapping, fails in one line."""
    import yaml
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError(f"{path} is not valid YAML{line}: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds a YAML {type(values).__name__}, not a mapping of settings "
                          "(e.g. 'optim: {blr: 1e-4}')")
    return values


def check(cfg: DictConfig) -> None:
    """Cross-field checks that types cannot express, then every range (validate.check_config)."""
    from .validate import check_config  # validate builds on this module's ConfigError
    for name, t in cfg.teachers.items():
        if OmegaConf.is_missing(t, "arch"):
            raise ConfigError(f"teachers.{name}.arch is missing: set a timm name, e.g. vit_base_patch16_224.mae")
        if not t.features and not t.relation_blocks:
            raise ConfigError(f"teachers.{name} gives no target: set features=true or relation_blocks=[-3,-2]")
    mask_teacher = cfg.masking.teacher
    if mask_teacher is not None and mask_teacher not in cfg.teachers:
        raise ConfigError(f"masking.teacher='{mask_teacher}' is not a teacher; choose one of "
                          f"{sorted(cfg.teachers)} or null")
    if not 0.0 < cfg.masking.keep_ratio <= 1.0:
        raise ConfigError(f"masking.keep_ratio={cfg.masking.keep_ratio} must be in (0, 1]")
    if cfg.train.fsdp and cfg.train.compile:
        raise ConfigError("train.compile is not supported with train.fsdp yet: set train.compile=false, or use DDP")
    if cfg.train.fsdp and cfg.train.monitor_every:
        raise ConfigError("train.monitor_every reads unsharded weights: set train.monitor_every=0 with train.fsdp=true")
    check_config(cfg)


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
