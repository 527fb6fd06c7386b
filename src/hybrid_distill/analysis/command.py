"""`hybrid-distill analyze MODEL [MODEL...]`: attention distance, NMI and maps of ViTs on images.

Every model sees the same images (a seeded subset of the data), resized to its own input size
and normalised with its own mean/std. Writes DIR/analysis.json (every plotted number, the image
indices and provenance) and DIR/*.png (paper figures 1-3 and 5 in kind).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from hybrid_distill.analysis import plots
from hybrid_distill.analysis.extract import METRICS, dataset_metrics, num_layers, query_maps
from hybrid_distill.analysis.metrics import uniform_distance
from hybrid_distill.cli_parser import Parser
from hybrid_distill.config_check import AT_LEAST_0, AT_LEAST_1, check_flags
from hybrid_distill.config_schema import ConfigError
from hybrid_distill.data.unreadable import (
    Checked,
    add_unreadable_flags,
    check_unreadable_flags,
    readable_indices,
    unreadable_policy,
)
from hybrid_distill.evaluation.loading import check_model_file, load_eval_model
from hybrid_distill.files import student_with_decoder, write_atomic
from hybrid_distill.models.load import mean_std
from hybrid_distill.provenance import provenance
from hybrid_distill.runtime import pick_device
from hybrid_distill.validate import model_spec, writable_dir


class AnalyzeError(ValueError):
    """A problem with the command's input, said in one line with the fix (exit code 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="hybrid-distill analyze", description=__doc__.splitlines()[0])
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="timm name, hybrid-distill model file or checkpoint, or run directory",
    )
    p.add_argument(
        "--data",
        required=True,
        help="'fashion_mnist' or 'fashion_mnist:DIR' (IDX files), or an image folder (class subfolders)",
    )
    p.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split")
    p.add_argument("--num-images", type=int, default=1000, help="images analysed (a seeded random subset)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="1-indexed layers for the attention maps, negative from the end (default: 4 spread layers)",
    )
    p.add_argument(
        "--queries",
        nargs="+",
        default=["0.5,0.5"],
        metavar="ROW,COL",
        help="query patches for the attention maps: grid cells as integers (7,7), or positions as "
        "fractions of the image height and width (0.5,0.5; the same spot for every grid). "
        "Default: the image centre",
    )
    p.add_argument("--map-images", type=int, default=2, help="images shown in the attention-map figures")
    p.add_argument("--img-size", type=int, default=None, help="input size for timm names (their img_size)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="load timm's pretrained weights for timm names (without it their weights are random)",
    )
    p.add_argument("--arch", help="timm name of an official weight file's architecture (MAE, DeiT, DINO, CLIP)")
    p.add_argument(
        "--decoder",
        action="store_true",
        help="run directories and checkpoints (trained with student.decoder=blocks): the decoder's "
        "blocks too, as layers after the encoder's (paper figure 3a); timm names as usual",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--no-figures", action="store_true", help="write analysis.json only (studies draw their own)")
    add_unreadable_flags(p)
    args = p.parse_args(argv)
    if args.layers and 0 in args.layers:
        p.error("--layers are 1-indexed (1 = first block, -1 = last); 0 is not a layer")
    args.queries = [parse_cell(q, p) for q in args.queries]
    return args


FLAGS = {
    "--num-images": AT_LEAST_1,
    "--map-images": AT_LEAST_0,
    "--batch-size": AT_LEAST_1,
    "--img-size": AT_LEAST_1,
    "--workers": AT_LEAST_0,
    "--seed": AT_LEAST_0,
}


def check_args(args: argparse.Namespace) -> None:
    """Models readable, device valid, sizes in range, output writable: before any image is read."""
    for spec in args.models:
        model_spec("MODEL", spec)
        check_model_file(spec, args.arch)
    pick_device(args.device, "--device")
    check_flags(args, FLAGS)
    check_unreadable_flags(args)
    writable_dir("--out", args.out)


def parse_cell(text: str, parser: argparse.ArgumentParser) -> tuple[int | float, int | float]:
    """'7,7' -> grid cell (7, 7); '0.5,0.25' -> fractions of the image, resolved per model grid."""
    try:
        row, col = (float(v) if "." in v else int(v) for v in text.split(","))
    except ValueError:
        parser.error(f"--queries takes ROW,COL as grid cells (7,7) or image fractions (0.5,0.5), got '{text}'")
    if any(isinstance(v, float) and not 0 <= v <= 1 for v in (row, col)):
        parser.error(f"--queries fractions must lie in [0, 1], got '{text}'")
    return row, col


def grid_cell(query: tuple, grid: tuple[int, int]) -> tuple[int, int]:
    """A query as a cell of this model's grid; fractions pick the cell holding that spot."""
    return tuple(min(int(v * n), n - 1) if isinstance(v, float) else v for v, n in zip(query, grid))


class Images(Dataset):
    """Images only, as RGB tensors in [0, 1] of one size; labels dropped."""

    def __init__(self, base: Dataset, size: tuple[int, int]):
        self.base = base
        # Shorter side to the model's size, then the centre crop: the whole Fashion-MNIST frame stays.
        self.transform = transforms.Compose(
            [
                transforms.Resize(min(size), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.base[index][0]
        return self.transform(image.convert("RGB"))


def open_dataset(spec: str, split: str) -> Dataset:
    if spec == "fashion_mnist" or spec.startswith("fashion_mnist:"):
        from hybrid_distill.data.fashion_mnist import FashionMNIST

        root = spec.partition(":")[2] or None
        return FashionMNIST(root, split)
    if Path(spec).is_dir():
        from torchvision.datasets import ImageFolder

        return ImageFolder(spec)
    raise AnalyzeError(f"--data '{spec}' is neither 'fashion_mnist[:DIR]' nor an existing image folder")


def choose_indices(size: int, count: int, seed: int) -> list[int]:
    if count > size:
        raise AnalyzeError(f"--num-images {count} exceeds the {size} images of the data; lower it")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:count].tolist())


def label_parts(spec: str) -> list[str]:
    """A file's stem or a directory's name, after the folders above it; a timm name as it is."""
    path = Path(spec)
    if not path.exists():
        return [spec]
    return [*path.parent.parts, path.name if path.is_dir() else path.stem]


def model_labels(specs: list[str]) -> list[str]:
    """Short unique labels (they name figure files too): the last path part, with as many parent folders
    as tell two apart (runs/a/seed0 and runs/b/seed0 -> a-seed0, b-seed0); what is still equal gets -2."""
    parts = [label_parts(s) for s in specs]
    depth = [1] * len(specs)
    while True:
        labels = ["-".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    out = []
    for label in labels:
        unique, n = label, 1
        while unique in out:
            n += 1
            unique = f"{label}-{n}"
        out.append(unique)
    return out


def load(spec: str, args: argparse.Namespace) -> torch.nn.Module:
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    if args.decoder and Path(spec).exists():
        try:
            return student_with_decoder(spec)
        except (ValueError, KeyError) as err:
            raise AnalyzeError(f"--decoder: {err}") from err
    if Path(spec).exists() and (kwargs or args.pretrained) and not args.arch:
        print(f"note: --img-size/--pretrained apply to timm names only; {spec} keeps its own")
        kwargs = {}
    try:
        return load_eval_model(spec, args.arch if Path(spec).exists() else None, args.pretrained, **kwargs)
    except ValueError as err:  # unknown timm name, or a file that is not ours
        raise AnalyzeError(str(err)) from err


def describe(model: torch.nn.Module) -> dict:
    mean, std = mean_std(model)
    pe = model.patch_embed
    return {
        "architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
        "depth": num_layers(model),
        "encoder_depth": len(model.blocks),
        "heads": model.blocks[0].attn.num_heads,
        "embed_dim": model.embed_dim,
        "img_size": list(pe.img_size),
        "patch_size": list(pe.patch_size),
        "grid_size": list(pe.grid_size),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "mean": list(mean),
        "std": list(std),
    }


def normalised(batches, mean, std, device):
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    for images in batches:
        yield ((images - mean) / std).to(device)


def summarise(metrics: dict[str, torch.Tensor]) -> dict:
    """{name: (layers, images, H)} -> per-head mean/std over images and per-layer mean, as lists."""
    return {
        name: {
            "per_head": m.mean(dim=1).tolist(),
            "per_head_std": m.std(dim=1).tolist() if m.shape[1] > 1 else None,
            "per_layer": m.mean(dim=(1, 2)).tolist(),
        }
        for name, m in metrics.items()
    }


def map_settings(info: dict, args: argparse.Namespace) -> tuple[list[int], list[tuple[int, int]]]:
    """0-indexed layers and grid cells for the attention maps of one model."""
    depth, (gh, gw) = info["depth"], info["grid_size"]
    layers = args.layers or sorted({round(i * (depth - 1) / 3) + 1 for i in range(4)})
    for layer in layers:
        if not -depth <= layer <= depth:
            raise AnalyzeError(f"--layers {layer} is outside 1..{depth} (or -{depth}..-1) of a {depth}-block model")
    cells = [grid_cell(q, (gh, gw)) for q in args.queries]
    for r, c in cells:
        if not (0 <= r < gh and 0 <= c < gw):
            raise AnalyzeError(f"--queries {r},{c} is outside the {gh}x{gw} patch grid of this model")
    return [layer - 1 if layer > 0 else depth + layer for layer in layers], cells


def example_positions(base: Dataset, indices: list[int], count: int) -> list[int]:
    """Positions in `indices` of the attention-map examples: one per class while classes last (the
    first images of a class-sorted folder would all be one class), then the next ones in order."""
    labels = getattr(base, "labels", getattr(base, "targets", None))
    if labels is None:
        return list(range(min(count, len(indices))))
    first = {}
    for pos, index in enumerate(indices):
        first.setdefault(int(labels[index]), pos)
    chosen = sorted(first.values())[:count]
    rest = [p for p in range(len(indices)) if p not in chosen]
    return (chosen + rest)[:count]


def analyse(model, spec: str, base: Dataset, indices: list[int], args, device) -> tuple[dict, dict]:
    """Numbers of one model, and what its attention-map figure needs."""
    model = model.to(device)
    info = describe(model)
    data = Subset(Images(base, tuple(info["img_size"])), indices)
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    layers, cells = map_settings(info, args)  # checked before the long part
    start = time.perf_counter()
    metrics = dataset_metrics(model, normalised(loader, info["mean"], info["std"], device))
    result = {
        "spec": spec,
        **info,
        **summarise(metrics),
        "seconds": round(time.perf_counter() - start, 2),
        "uniform_distance": uniform_distance(info["grid_size"], info["patch_size"]),
    }
    figure = None
    if args.map_images:
        shown = example_positions(base, indices, args.map_images)
        raw = torch.stack([data[i] for i in shown])
        flat = [r * info["grid_size"][1] + c for r, c in cells]
        maps = query_maps(model, next(normalised([raw], info["mean"], info["std"], device)), layers, flat)
        result["query_maps"] = {
            "block_indices": layers,
            "queries": [list(c) for c in cells],
            "image_indices": [indices[i] for i in shown],
            "maps": maps.tolist(),
        }
        figure = {
            "images": raw,
            "maps": maps,
            "layers": layers,
            "queries": cells,
            "patch_size": tuple(info["patch_size"]),
        }
    return result, figure


def draw(results: dict, figures: dict, out: Path) -> list[str]:
    uniform = {k: r["uniform_distance"] for k, r in results.items()}
    paths = [
        plots.distance_figure({k: r[v]["per_head"] for k, r in results.items()}, v, out / f"{v}.png", uniform)
        for v in ("distance", "distance_plain")
    ]
    paths.append(plots.nmi_figure({k: r["nmi"]["per_layer"] for k, r in results.items()}, out / "nmi.png"))
    for label, fig in figures.items():
        if fig is not None:
            title = f"{label}: head-mean attention of the query patch (red box) to patches"
            paths.append(plots.attention_map_figure(**fig, title=title, path=out / f"attention_maps_{label}.png"))
    return [str(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except (AnalyzeError, ConfigError, FileNotFoundError) as err:
        print(f"hybrid-distill analyze: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device, "--device")
    policy = unreadable_policy(args, args.out / "unreadable.txt")
    base = Checked(open_dataset(args.data, args.split), policy, f"analyze {args.data}")
    indices = readable_indices(base, choose_indices(len(base), args.num_images, args.seed), args.workers)
    results, figures = {}, {}
    for spec, label in zip(args.models, model_labels(args.models)):
        results[label], figures[label] = analyse(load(spec, args), spec, base, indices, args, device)
        print(
            f"{label}: distance per layer {[round(v, 1) for v in results[label]['distance']['per_layer']]}, "
            f"NMI per layer [{', '.join(f'{v:.3g}' for v in results[label]['nmi']['per_layer'])}]"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [] if args.no_figures else draw(results, figures, args.out)
    report = {
        "command": "analyze",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "spec": args.data,
            "split": args.split,
            "num_images": len(indices),
            "seed": args.seed,
            "indices": indices,
        },
        "metrics": {name: METRIC_NOTES[name] for name in METRICS},
        "models": results,
        "figures": paths,
        "provenance": provenance(),
    }
    write_atomic(args.out / "analysis.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    print(f"wrote {args.out / 'analysis.json'} and {len(paths)} figures")
    return 0


METRIC_NOTES = {
    "distance": "mean attention distance in pixels, prefix dropped, rows renormalised (Park et al. 2023)",
    "distance_plain": "mean attention distance in pixels, prefix dropped, rows not renormalised (dBOT)",
    "nmi": "NMI of queries and keys, prefix dropped, p(q) uniform, natural log (Park et al. 2023)",
}
