"""`hybrid-distill eval PROTOCOL MODEL --data ...`: one protocol (knn, linear, finetune: the table in
`protocols.py`), one JSON result.

MODEL: a run directory or checkpoint of ours, one of our model files, an official weight file with
--arch (MAE, DeiT, DINO, CLIP formats), or a timm name (--pretrained: its released weights; without
it the weights are random, and the command says so).
--data: an image folder with train/ and val/ subfolders (torchvision ImageFolder layout),
`fashion_mnist[:PATH]` (IDX files; default the Debian package path), or `cifar100:PATH`, `cars:PATH`,
`inat19:PATH` (torchvision's readers; paper Table 2).
Under torchrun, features are extracted on all ranks and gathered; rank 0 writes the JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from hybrid_distill.cli_parser import Parser
from hybrid_distill.config_check import AT_LEAST_1, POSITIVE, Range, check_flags
from hybrid_distill.config_schema import ConfigError
from hybrid_distill.data.unreadable import (
    Checked,
    Policy,
    add_unreadable_flags,
    check_unreadable_flags,
    unreadable_policy,
)
from hybrid_distill.distributed import process_group
from hybrid_distill.evaluation.datasets import TORCHVISION_DATA, torchvision_data
from hybrid_distill.evaluation.features import POOLS
from hybrid_distill.evaluation.finetune import PRESETS
from hybrid_distill.evaluation.loading import check_model_file, load_eval_model
from hybrid_distill.evaluation.protocols import PROTOCOLS
from hybrid_distill.evaluation.source import model_source, source_tag
from hybrid_distill.runtime import pick_device
from hybrid_distill.validate import model_spec, writable_dir

FLAGS = {
    "--epochs": AT_LEAST_1,
    "--batch-size": AT_LEAST_1,
    "--k": AT_LEAST_1,
    "--temperature": POSITIVE,
    "--crop-pct": Range(0, 1, low_open=True),
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hybrid-distill eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    summaries = "; ".join(f"{name}: {protocol.summary}" for name, protocol in PROTOCOLS.items())
    p.add_argument("protocol", choices=list(PROTOCOLS), help=summaries)
    p.add_argument(
        "model", help="run dir, checkpoint, model file (.pt), official weight file (with --arch) or timm name"
    )
    p.add_argument("--pretrained", action="store_true", help="a timm name's released weights (else random)")
    p.add_argument("--arch", help="timm name of an official weight file's architecture, e.g. vit_base_patch16_224.mae")
    p.add_argument(
        "--data",
        required=True,
        help="image folder with train/ and val/, fashion_mnist[:PATH], cifar100:PATH, cars:PATH or inat19:PATH",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results folder (default: RUN_DIR/eval, the model file's folder/eval, or ./eval/TIMM_NAME)",
    )
    p.add_argument("--pool", choices=POOLS, default="cls", help="frozen features: CLS token or mean of patch tokens")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="fine-tune recipe (default: fashion_mnist for that data, else imagenet)",
    )
    p.add_argument("--epochs", type=int, help="override the probe's or the preset's epochs")
    p.add_argument("--batch-size", type=int, help="feature extraction (default 256) or fine-tune batch")
    p.add_argument("--k", type=int, default=20, help="k-NN neighbours (DINO: 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature (DINO: 0.07)")
    p.add_argument("--crop-pct", type=float, help="eval resize/centre crop (default 1.0 Fashion-MNIST, 0.875 folders)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    add_unreadable_flags(p)
    for protocol in PROTOCOLS.values():
        for flag, options in protocol.flags.items():
            p.add_argument(flag, **{"help": f"{protocol.name} only", **options})
    return p


def check_args(args, model_given: bool = False) -> None:
    """Every flag in range and the model readable (unless the API passed a model object), before data or
    model are loaded."""
    if not model_given:
        model_spec("MODEL", args.model)
        check_model_file(args.model, args.arch)
    check_flags(args, FLAGS)
    if args.device is not None:
        pick_device(args.device, "--device")
    if args.out is not None:
        writable_dir("--out", args.out)
    check_unreadable_flags(args)


def load_data(spec: str, policy: Policy | None = None):
    """(train, test, info) for `fashion_mnist[:PATH]` or an image folder with train/ and val/; with a policy,
    both read under it (unreadable images skipped, counted and named)."""
    train, test, info = open_data(spec)
    if policy is None:
        return train, test, info
    return Checked(train, policy, f"{info['name']} train"), Checked(test, policy, f"{info['name']} test"), info


def open_data(spec: str):
    if spec == "fashion_mnist" or spec.startswith("fashion_mnist:"):
        from hybrid_distill.data.fashion_mnist import FashionMNIST

        root = spec.partition(":")[2] or None
        info = {"name": "fashion_mnist", "spec": spec, "crop_pct": 1.0}
        return FashionMNIST(root, "train"), FashionMNIST(root, "test"), info
    if spec.partition(":")[0] in TORCHVISION_DATA:
        return torchvision_data(*spec.split(":", 1))
    root = Path(spec)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise FileNotFoundError(
            f"--data {spec}: expected an image folder with train/ and val/ subfolders "
            "(one folder per class inside each), fashion_mnist[:PATH], cifar100:PATH, cars:PATH or inat19:PATH"
        )
    from torchvision.datasets import ImageFolder

    train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    if train.classes != test.classes:
        raise ConfigError(
            f"--data {root}: train/ and val/ hold different classes ({len(train.classes)} vs {len(test.classes)})"
        )
    return train, test, {"name": root.resolve().name, "spec": str(root.resolve()), "crop_pct": 0.875}


def default_out(model_spec: str) -> Path:
    path = Path(model_spec)
    if path.is_dir():
        return path / "eval"
    if path.is_file():
        return path.parent / "eval"
    return Path("eval") / model_spec.replace("/", "_")


def run_protocol(args, model, train, test, info: dict, out: Path, source: dict | None = None) -> tuple[dict, dict]:
    """(result, settings) of the protocol args name, as its entry in `PROTOCOLS` reads the flags."""
    protocol = PROTOCOLS[args.protocol]
    settings = protocol.settings(args, info, out, source)
    return protocol.run(model, train, test, **settings), settings


def result_path(out: Path, args, settings: dict, source: dict | None, data_name: str) -> Path:
    variant = settings[PROTOCOLS[args.protocol].variant]
    return out / f"{args.protocol}-{data_name}-{variant}{source_tag(source)}.json"


def evaluate_args(args, model=None) -> dict:
    """One evaluation as the command's arguments describe it: the CLI and `hybrid_distill.evaluate` (which may
    pass a model object; results are then written only with --out) share this, defaults included."""
    check_args(args, model_given=model is not None)
    with process_group("cuda" if torch.cuda.is_available() else "cpu"):
        policy = unreadable_policy(args)
        train, test, info = load_data(args.data, policy)
        source = None if model is not None else model_source(args.model)
        model = model if model is not None else load_eval_model(args.model, args.arch, args.pretrained)
        out = args.out or (default_out(args.model) if source is not None else None)
        policy.names_file = (out or Path(tempfile.mkdtemp())) / "unreadable.txt"
        result, settings = run_protocol(args, model, train, test, info, policy.names_file.parent, source)
        result = {**result, "model": args.model, "source": source, "data": info}
        if out is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            path = result_path(out, args, settings, source, info["name"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2, default=str))
            result["path"] = str(path)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = evaluate_args(args)
    if "path" in result:
        metrics = "  ".join(f"{m} {result[m]:.2f}%" for m in PROTOCOLS[args.protocol].metrics)
        print(f"{args.protocol}: {metrics}  -> {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
