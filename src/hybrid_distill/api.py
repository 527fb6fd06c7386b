"""The Python API, for notebooks and scripts: the functions the command line calls.

    run = hybrid_distill.train("configs/hybrid_vitb_mae_clip.yaml", data__path="/data/imagenet")
    student = hybrid_distill.load_student(run)
    hybrid_distill.evaluate(run, "/data/imagenet", "knn")
    hybrid_distill.export(run, "timm", "student")

Overrides are the command line's dotted keys with `__` for the dots (`optim__blr=1e-4` is `optim.blr=1e-4`).
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def as_config(config, overrides: dict) -> DictConfig:
    """A YAML path, a nested dict or a DictConfig, with `a__b=value` overrides, typed and checked."""
    from .config import check, from_dict, load_config, merge, to_dict

    dotted = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if isinstance(config, (str, Path)):
        return load_config(config, dotted)
    cfg = from_dict(to_dict(config) if isinstance(config, DictConfig) else dict(config))
    for item in dotted:
        cfg = merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    check(cfg)
    return cfg


def train(
    config, *, resume: str | None = None, init_from: str | None = None, allow_config_change: bool = False, **overrides
) -> Path:
    """Distil a student; returns the run directory (as `hybrid-distill train` does)."""
    from .trainer import train as run_training

    return run_training(
        as_config(config, overrides), resume=resume, init_from=init_from, allow_config_change=allow_config_change
    )


def load_student(run: str | Path):
    """A run directory's newest student (or a checkpoint's, or a model file's) as a plain timm ViT
    with its mean / std in `pretrained_cfg`."""
    from .files import load_model

    return load_model(str(run))


def evaluate(model, data: str, protocol: str = "knn", **options) -> dict:
    """`hybrid-distill eval PROTOCOL MODEL --data DATA`, the same code and defaults: model a run / checkpoint /
    model file / timm name (results written where the command writes them) or a model object (written only
    with out=...); options are the command's flags (k=20, crop_pct=0.875, epochs=10, preset='imagenet',
    pool='mean', out=..., ...)."""
    from torch import nn

    from .evaluation.command import PROTOCOLS, build_parser, evaluate_args

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; choose one of {sorted(PROTOCOLS)}")
    spec = "<model object>" if isinstance(model, nn.Module) else str(model)
    args = build_parser().parse_args([protocol, spec, "--data", str(data), *flags(options)])
    return evaluate_args(args, model if isinstance(model, nn.Module) else None)


def flags(options: dict) -> list[str]:
    """{'crop_pct': 0.875, 'no_cache': True} -> ['--crop-pct', '0.875', '--no-cache']: a command's flags."""
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return argv


def analyze(models: list, data: str, out: str | Path, **options) -> dict:
    """Attention distance, NMI and attention maps of models (runs, files or timm names), with the
    figures written to `out`; options are `hybrid-distill analyze` flags (num_images=200, ...)."""
    import json

    from .analysis.command import main as analyze_main

    analyze_main([str(m) for m in models] + ["--data", str(data), "--out", str(out), *flags(options)])
    return json.loads((Path(out) / "analysis.json").read_text())


def export(run, fmt: str, out, verify: bool = False) -> dict:
    """Write a run's student for timm (a folder when `out` has no suffix), ViTDet (mae) or mmseg / mmpretrain."""
    from .weights.command import check_export
    from .weights.export import export as write

    check_export(str(run), fmt, Path(out))
    return write(run, fmt, out, verify=verify)
