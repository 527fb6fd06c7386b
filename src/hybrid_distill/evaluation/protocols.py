"""The evaluation protocols, one table: name -> the function that runs it, the settings it reads from the
`eval` command's flags, and the metrics its result holds.

The `eval` command (its choices, its dispatch, its result file's name), `hybrid_distill.evaluate` and the
study's protocol list read this table. A new protocol is a function `run(model, train_ds, test_ds,
**settings) -> dict` with its metrics in percent, and one `register(Protocol(...))` call (below, or in the
code that brings it); flags of its own (beyond the command's shared ones) come with its entry.
"""

from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hybrid_distill.evaluation.finetune import PRESETS, finetune_eval
from hybrid_distill.evaluation.knn import knn_eval
from hybrid_distill.evaluation.linear import ProbeConfig, linear_eval
from hybrid_distill.evaluation.source import source_tag


@dataclass(frozen=True)
class Protocol:
    name: str
    run: Callable[..., dict]  # run(model, train_ds, test_ds, **settings) -> {metric: percent, 'config': ...}
    settings: Callable[[Namespace, dict, Path, dict | None], dict]  # (flags, data info, out, source) -> settings
    metrics: tuple[str, ...] = ("top1", "top5")
    variant: str = "pool"  # the setting whose value names the result file: PROTOCOL-DATA-VARIANT.json
    summary: str = ""
    flags: dict[str, dict] = field(default_factory=dict)  # '--name' -> argparse add_argument keywords


PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise ValueError(f"evaluation protocol '{protocol.name}' is registered twice; give the new one another name")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def frozen_settings(args: Namespace, info: dict, out: Path) -> dict:
    """What k-NN and the linear probe share: frozen features, cached per data split."""
    return dict(
        pool=args.pool,
        batch_size=args.batch_size or 256,
        crop_pct=args.crop_pct if args.crop_pct is not None else info["crop_pct"],
        cache_dir=None if args.no_cache else out / "features",
        data_keys=(f"{info['spec']}#train", f"{info['spec']}#test"),
        device=args.device,
    )


def knn_settings(args: Namespace, info: dict, out: Path, source: dict | None) -> dict:
    return {**frozen_settings(args, info, out), "k": args.k, "temperature": args.temperature}


def linear_settings(args: Namespace, info: dict, out: Path, source: dict | None) -> dict:
    cfg = ProbeConfig() if args.epochs is None else replace(ProbeConfig(), epochs=args.epochs)
    return {**frozen_settings(args, info, out), "cfg": cfg}


def finetune_settings(args: Namespace, info: dict, out: Path, source: dict | None) -> dict:
    """The preset named by --preset, else the data's own, else ImageNet's; flags override its values."""
    preset = args.preset or (info["name"] if info["name"] in PRESETS else "imagenet")
    flags = (("epochs", args.epochs), ("batch_size", args.batch_size), ("crop_pct", args.crop_pct))
    return {
        "preset": preset,
        "device": args.device,
        "log": print,
        "save_to": out / f"finetune-{info['name']}-{preset}{source_tag(source)}",  # a timm folder beside the JSON
        **{k: v for k, v in flags if v is not None},
    }


register(Protocol("knn", knn_eval, knn_settings, summary="weighted k-NN on frozen features (DINO)"))
register(Protocol("linear", linear_eval, linear_settings, summary="linear probe on frozen features (DINOv2)"))
register(Protocol("finetune", finetune_eval, finetune_settings, variant="preset", summary="full fine-tuning"))
