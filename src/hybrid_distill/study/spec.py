"""A study file: named rows (config diffs over one base config) times seeds, typed and checked.

    name: fashion_mnist_196                  # default: the file's stem
    out: runs/studies/fashion_mnist_196      # default: runs/studies/<name>
    seeds: [0, 1, 2]
    reference: hybrid                        # paired differences against this row (default: the first)
    base: {from: configs/x.yaml, train: {epochs: 5}}   # a config diff; `from`: a YAML config it starts from
    teachers:                                # shared teachers, built once before any row
      sup: {kind: supervised, epochs: 20}
    rows:
      hybrid: {teachers: {sup: {weights: "teacher:sup", features: true}}}
      hybrid_no_mask: {from: hybrid, masking.strategy: none}   # `from`: another row; dotted keys allowed
      paper_row: {base: configs/paper/t3_deit_mae.yaml, train.epochs: 1}   # `base`: config files
    evaluate: {knn: true, linear: true, finetune: {preset: fashion_mnist, epochs: 2}}
    analysis: {images: 200}
    smoke: ["seeds=[0,1]", "only=[hybrid]"]  # overrides of this file that `--smoke` applies

A cell's config is defaults <- base's `from` YAML <- base <- the row's `from` chain <- the row's `base`
files <- the row <- {seed, name, output_dir}. YAML files (`base.from`, a row's `base`: one path or a list,
from the current directory) are read as `load_config` reads them, their own `base:` chains first.
`weights: teacher:NAME` in a row's teacher is the shared teacher NAME's file;
its arch and model_kwargs default to that teacher's.
"""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import from_dict, merge, read_yaml, yaml_mapping
from ..config_schema import ConfigError
from .claims import ClaimRoles

TEACHER_REF = "teacher:"


class StudyError(ConfigError):
    """A problem with a study file, said in one line (exit code 2)."""


class TeacherKind(str, Enum):
    supervised = "supervised"  # labels, cross-entropy (the stand-in for DeiT / CLIP)
    mae = "mae"  # MAE: 75% random masking, a decoder, normalised-pixel loss
    controlled = "controlled"  # heads local or long-range by construction (study/controlled.py), not trained


@dataclass
class SharedTeacher:
    kind: TeacherKind = TeacherKind.supervised
    arch: str | None = None  # default: the base config's student arch
    model_kwargs: dict[str, Any] | None = None  # default: the base config's student model_kwargs
    images: int = 0  # the first N training images (0: the base config's data.limit, else all)
    epochs: int = 8
    blr: float = 1.5e-3  # lr = blr * batch / 256
    batch: int = 128
    seed: int = 0
    crop_scale: list[float] | None = None  # default: the base config's data.crop_scale
    must_beat_pixels: bool = False  # stop the study when the held-out k-NN check does not beat raw pixels
    pos_embed: str = "learned"  # 'sincos': MAE's fixed 2-D sin-cos encoder positions (kind mae only)
    mask_ratio: float = 0.75  # kind mae: MAE's default (He et al. 2022, 4.1)
    decoder_depth: int = 2  # kind mae: decoder blocks (MAE ViT-B: 8; 2 at this width)
    curve_every: int = 0  # record per-head attention distance every N epochs (study/curve.py); 0: never
    curve_images: int = 256  # held-out training images the curve is read on
    head_betas: list[float] | None = None  # kind controlled: per head, > 0 local, < 0 long-range, 0 uniform


@dataclass
class EvaluateSpec:
    data: str | None = None  # 'fashion_mnist[:PATH]' or a folder with train/ and val/; default from base data
    train_images: int = 10000  # k-NN bank / probe / fine-tune images: the first N of the study's order (splits.py)
    test_images: int = 10000  # the first N of the test split (0: all)
    heldout_images: int = 10000  # teacher gate queries: the last N of the order, trained on by no model
    knn: bool = True
    linear: bool = True
    finetune: dict[str, Any] | None = None  # {preset: fashion_mnist, epochs: 2, ...}: any FinetuneConfig field


@dataclass
class AnalysisSpec:
    images: int = 200  # a seeded subset of the split, the same for every model
    split: str = "test"


@dataclass
class PublishSpec:
    dir: str = ""  # where `--publish` writes study.json, study.md, headline.json and figures (e.g. docs/replication)
    readme: str | None = None  # a file whose `<!-- verdicts:NAME:... -->` markers get the verdict table
    demo: bool = False  # also the demo's packaged replication.json (the headline the demo quotes)


@dataclass
class StudySpec:
    name: str = ""
    out: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str | None = None
    only: list[str] | None = None  # run these rows only (default: all)
    base: dict[str, Any] = field(default_factory=dict)
    teachers: dict[str, SharedTeacher] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    claims: ClaimRoles | None = None  # the paper's claims judged in study.md (claims.py)
    smoke: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)  # `--variant NAME`: named overrides of this file
    publish: PublishSpec | None = None
    teachers_dir: str = ""  # where shared teachers live (default OUT/teachers); variants may share the main study's


def load_study(
    source: str | Path | dict, overrides: list[str] | None = None, smoke: bool = False, variant: str | None = None
) -> DictConfig:
    """Schema <- file (or dict) <- its `smoke` overrides (with smoke) or a variant's <- `key=value` overrides,
    checked."""
    where = str(source) if not isinstance(source, dict) else "study"
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise StudyError(f"study file not found: {path} (see configs/studies/)")
        source = yaml_mapping(path)  # not YAML, not a mapping, duplicate keys, an alias bomb: one line
        source.setdefault("name", path.stem)
    spec = as_study(merge(OmegaConf.structured(StudySpec()), source, where))
    if variant is not None and variant not in spec.variants:
        raise StudyError(
            f"--variant {variant}: the study has no such variant; variants: "
            f"{', '.join(spec.variants) or 'none (add variants: {NAME: [key=value, ...]})'}"
        )
    extra = (
        (list(spec.smoke) if smoke else []) + (list(spec.variants[variant]) if variant else []) + list(overrides or [])
    )
    for item in extra:
        if "=" not in item:
            raise StudyError(f"study override '{item}' is not key=value (e.g. seeds=[0,1])")
        spec = as_study(merge(spec, OmegaConf.from_dotlist([item]), f"study override '{item}'"))
    if smoke:  # a smoke run's teachers are smoke teachers too: never beside (or refused by) the real ones
        spec.out = spec.out + "-smoke"
        spec.teachers_dir = spec.teachers_dir and spec.teachers_dir.rstrip("/") + "-smoke"
    check_study(spec)
    return spec


def as_study(spec: DictConfig) -> DictConfig:
    spec.out = spec.out or f"runs/studies/{spec.name or 'study'}"
    return spec


def check_study(spec: DictConfig) -> None:
    if not spec.rows:
        raise StudyError("the study has no rows: add rows: {NAME: {config diff}}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise StudyError(f"seeds must be a non-empty list of distinct integers, got {list(spec.seeds)}")
    unknown = [r for r in [*(spec.only or []), spec.reference] if r is not None and r not in spec.rows]
    if unknown:
        raise StudyError(f"row '{unknown[0]}' (in only / reference) is not a row; rows: {', '.join(spec.rows)}")
    if spec.reference is not None and spec.only and spec.reference not in spec.only:
        raise StudyError(f"reference row '{spec.reference}' is not among the rows run (only: {list(spec.only)})")
    for name, row in spec.rows.items():
        if not isinstance(row, DictConfig):
            raise StudyError(f"rows.{name} must be a mapping (a config diff), got {row!r}")
    for name, t in spec.teachers.items():
        if t.pos_embed not in ("learned", "sincos") or t.pos_embed == "sincos" and t.kind is not TeacherKind.mae:
            raise StudyError(
                f"teachers.{name}.pos_embed='{t.pos_embed}': 'learned', or 'sincos' (MAE's fixed "
                "encoder positions) for kind: mae"
            )
        if t.curve_every and t.curve_images > spec.evaluate.heldout_images:
            raise StudyError(
                f"teachers.{name}.curve_images={t.curve_images} must lie inside the held-out end, "
                f"evaluate.heldout_images={spec.evaluate.heldout_images}: lower it"
            )
        if (t.kind is TeacherKind.controlled) != (t.head_betas is not None):
            raise StudyError(f"teachers.{name}: head_betas (one per head) is for kind: controlled, and required by it")
    check_finetune(spec.evaluate.finetune)
    check_claims(spec)


def check_claims(spec: DictConfig) -> None:
    """Every row a claim names is a row of the study."""
    if spec.claims is None:
        return
    c = spec.claims
    named = [c.hybrid, *c.single, c.sup_student, *c.masking.values(), c.decoder, c.mask_recon, c.relation_control]
    unknown = [r for r in named if r is not None and r not in spec.rows]
    if unknown:
        raise StudyError(f"claims: row '{unknown[0]}' is not a row; rows: {', '.join(spec.rows)}")
    teachers = [t for t in (c.sup_teacher, c.mae_teacher) if t not in spec.teachers]
    if teachers:
        raise StudyError(
            f"claims: teacher '{teachers[0]}' is not a shared teacher; teachers: {', '.join(spec.teachers)}"
        )


def check_finetune(options) -> None:
    if not options:
        return
    from ..evaluation.finetune import PRESETS, FinetuneConfig, make_config

    valid = set(FinetuneConfig.__dataclass_fields__) | {"preset"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise StudyError(
            f"evaluate.finetune.{unknown[0]} is not a fine-tune setting; valid: {', '.join(sorted(valid))}"
        )
    if options.get("preset", "fashion_mnist") not in PRESETS:
        raise StudyError(f"evaluate.finetune.preset='{options['preset']}' is unknown; choose one of {sorted(PRESETS)}")
    plain = OmegaConf.to_container(options) if isinstance(options, DictConfig) else dict(options)
    settings = {k: v for k, v in plain.items() if k != "preset"}
    try:  # values too, before any cell trains (the fine-tune runs only after a cell's training)
        make_config(options.get("preset", "fashion_mnist"), **settings)
    except (TypeError, ValueError) as e:
        raise StudyError(f"evaluate.finetune: {e}") from None


def run_rows(spec: DictConfig) -> list[str]:
    return list(spec.only) if spec.only else list(spec.rows)


def reference_row(spec: DictConfig) -> str:
    return spec.reference or run_rows(spec)[0]


def nest(diff: dict) -> dict:
    """{'masking.strategy': 'none'} -> {'masking': {'strategy': 'none'}}, recursively, merging siblings."""
    out: dict = {}
    for key, value in diff.items():
        *path, last = str(key).split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        value = nest(value) if isinstance(value, dict) else value
        node[last] = (
            deep_merge(node[last], value) if isinstance(node.get(last), dict) and isinstance(value, dict) else value
        )
    return out


def deep_merge(a: dict, b: dict) -> dict:
    """b over a; nested mappings merge, everything else (lists included) is replaced."""
    out = dict(a)
    for key, value in b.items():
        out[key] = deep_merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def file_diff(start, where: str) -> dict:
    """A YAML config file as a plain diff, read by the configs' own reader (its `base:` chain first)."""
    path = Path(str(start))
    if not path.is_file():
        raise StudyError(f"{where}: config file not found: {start} (a path from the current directory)")
    return OmegaConf.to_container(read_yaml(path))


def base_diff(spec: DictConfig) -> dict:
    """The base as a plain diff over the defaults, its `from` YAML loaded first."""
    base = nest(OmegaConf.to_container(spec.base))
    start = base.pop("from", None)
    return base if start is None else deep_merge(file_diff(start, "base.from"), base)


def row_files(row: str, files) -> list:
    """A row's `base`: one config file or a list of them."""
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise StudyError(f"rows.{row}.base={files!r} must be a config file or a list of them (e.g. configs/x.yaml)")
    return files


def row_diff(spec: DictConfig, row: str, seen: tuple = ()) -> dict:
    """A row's diff: its `from` chain resolved (earlier rows first), then its `base` files, then its own keys."""
    if row in seen:
        raise StudyError(f"rows.{row}: `from` chain loops ({' -> '.join([*seen, row])})")
    if row not in spec.rows:
        raise StudyError(f"rows.{seen[-1]}.from: '{row}' is not a row; rows: {', '.join(spec.rows)}")
    diff = nest(OmegaConf.to_container(spec.rows[row]))
    parent, files = diff.pop("from", None), diff.pop("base", None)
    out = row_diff(spec, parent, (*seen, row)) if parent else {}
    for start in row_files(row, files) if files is not None else []:
        out = deep_merge(out, file_diff(start, f"rows.{row}.base"))
    return deep_merge(out, diff)


def teacher_file(spec: DictConfig, name: str) -> Path:
    return Path(spec.teachers_dir or Path(spec.out) / "teachers") / f"{name}.pt"


def base_config(spec: DictConfig) -> DictConfig:
    return from_dict(base_diff(spec), where="study base")


def shared_teacher_model(spec: DictConfig, name: str, base: DictConfig) -> tuple[str, dict]:
    """(arch, model_kwargs) of a shared teacher: its own, else the base student's."""
    t = spec.teachers[name]
    kwargs = t.model_kwargs if t.model_kwargs is not None else base.student.model_kwargs
    return t.arch or base.student.arch, OmegaConf.to_container(kwargs)


def resolve_teacher_refs(spec: DictConfig, diff: dict, base: DictConfig, where: str) -> dict:
    """`weights: teacher:NAME` -> the shared teacher's file, with its arch and model_kwargs as defaults."""
    for tname, tdiff in (diff.get("teachers") or {}).items():
        weights = (tdiff or {}).get("weights")
        if not (isinstance(weights, str) and weights.startswith(TEACHER_REF)):
            continue
        shared = weights[len(TEACHER_REF) :]
        if shared not in spec.teachers:
            raise StudyError(
                f"{where}: teachers.{tname}.weights={weights} names no shared teacher; "
                f"shared teachers: {', '.join(spec.teachers) or 'none (add teachers: {NAME: {kind: ...}})'}"
            )
        arch, kwargs = shared_teacher_model(spec, shared, base)
        tdiff.update(weights=str(teacher_file(spec, shared)))
        tdiff.setdefault("arch", arch)
        tdiff.setdefault("model_kwargs", kwargs)
    return diff


def cell_config(spec: DictConfig, row: str, seed: int) -> DictConfig:
    """The full, checked training config of one (row, seed) cell."""
    where = f"study row '{row}'"
    diff = deep_merge(base_diff(spec), row_diff(spec, row))
    diff = resolve_teacher_refs(spec, diff, base_config(spec), where)
    diff.update(seed=seed, name=f"seed{seed}", output_dir=str(Path(spec.out) / "cells" / row))
    try:
        return from_dict(diff, where=where)
    except ConfigError as err:
        raise StudyError(str(err)) from None


def eval_data(spec: DictConfig, base: DictConfig) -> str:
    """The evaluation data spec: the study's, else Fashion-MNIST at the base config's path."""
    if spec.evaluate.data:
        return spec.evaluate.data
    if base.data.dataset != "fashion_mnist":
        raise StudyError(
            "evaluate.data is not set: name the evaluation data (an image folder with train/ and "
            "val/, or fashion_mnist[:PATH])"
        )
    return "fashion_mnist" + (f":{base.data.path}" if base.data.path else "")
