"""`hybrid-distill teachers list|prefetch` and `hybrid-distill export`."""

import json
import sys
from pathlib import Path

from ..cli_parser import Parser
from ..config_schema import ConfigError
from ..files import write_atomic
from ..provenance import provenance
from ..validate import timm_arch, weight_file, writable_dir, writable_target
from .export import FORMATS, TORCH_SUFFIXES, export
from .offline import known_pretrained
from .teachers import build_teacher_backbone, resolve_arch, teacher_table

_COLUMNS = ("name", "arch", "role", "width", "depth", "heads", "patch", "img_size", "mean", "std", "license")


def _print_table(rows: list[dict]) -> None:
    cells = [[_cell(r[c]) for c in _COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _cell(value) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in value) + ")" if isinstance(value, list) else str(value)


def prefetch(names: list[str], cache: Path) -> list[dict]:
    """Download each teacher through timm / the HF hub into `cache` (its HF_HOME layout: cache/hub)."""
    records = []
    for name in names:
        _, record = build_teacher_backbone(resolve_arch(name), pretrained=True, cache_dir=cache / "hub")
        records.append(dict(record, name=name))
    (cache / "teachers.json").write_text(json.dumps(records, indent=2))
    return records


COPIED_CACHE = (
    "A --cache folder filled by prefetch can be copied to a machine without internet; there: "
    "export HF_HOME=/path/to/copy TORCH_HOME=/path/to/copy HF_HUB_OFFLINE=1, then train with weights: pretrained."
)


def teachers_main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hybrid-distill teachers", description=__doc__, epilog=COPIED_CACHE)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="supported teachers: normalisation, width, depth, heads, patch, licence")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fetch = sub.add_parser("prefetch", help="download teachers once, to train offline later", epilog=COPIED_CACHE)
    fetch.add_argument("names", nargs="+", help="names from `teachers list` or timm names with a pretrained tag")
    fetch.add_argument("--cache", type=Path, required=True, help="folder to download into")
    args = parser.parse_args(argv)
    if args.command == "prefetch":
        for name in args.names:  # before any download
            timm_arch("NAMES", resolve_arch(name))
        writable_dir("--cache", args.cache)
    if args.command == "list":
        rows = teacher_table()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(rows)
        return 0
    unknown = [n for n in args.names if not known_pretrained(resolve_arch(n))]
    if unknown:
        print(
            f"unknown teacher '{unknown[0]}': use a name from `hybrid-distill teachers list` or a timm name with "
            "a pretrained tag (timm.list_pretrained())",
            file=sys.stderr,
        )
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        records = prefetch(args.names, args.cache)
    except Exception as err:  # network, unknown names: say which and what to do
        print(
            f"prefetch failed: {err}\nprefetch needs internet access to the Hugging Face hub; run it on a "
            "machine that has it and copy the --cache folder over.",
            file=sys.stderr,
        )
        return 1
    for r in records:
        print(f"{r['name']}: {r['file']} sha256={r['sha256']} licence: {r['license']}")
    print(
        f"offline runs: export HF_HOME={args.cache.resolve()} TORCH_HOME={args.cache.resolve()} HF_HUB_OFFLINE=1 "
        "(or the same for a copy of the folder)"
    )
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="hybrid-distill export",
        description="write a trained student for timm, ViTDet/mmdet (mae) or mmseg/mmpretrain",
    )
    parser.add_argument("run", help="run directory, checkpoint file or hybrid-distill model file")
    parser.add_argument("--format", choices=FORMATS, default="timm")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="timm: a folder (no suffix) for timm.create_model('local-dir:DIR', "
        "pretrained=True), or FILE.safetensors / FILE.pth; other formats: FILE.pth",
    )
    parser.add_argument("--verify", action="store_true", help="reload the file strictly and compare features")
    args = parser.parse_args(argv)
    check_export(args.run, args.format, args.out)
    try:
        result = export(args.run, args.format, args.out, verify=args.verify)
    except ConfigError:
        raise  # bad input: one line, exit 2
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    record = {**result, "run": str(args.run), "provenance": provenance()}
    write_atomic(export_record(args.out), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    print(json.dumps(result, indent=2))
    return 0


def check_export(run: str, fmt: str, out: Path) -> None:
    """The run readable and --out a path export may write, before anything is read or written (the command
    and `hybrid_distill.export`)."""
    weight_file("RUN", run)
    export_target(out, fmt)
    writable_target("--out", out)


def export_record(out: Path) -> Path:
    """What `export` writes beside its files (what, from which run, by which code): also the mark that lets
    a later export replace them."""
    return out / "export.json" if not out.suffix else out.with_name(out.name + ".export.json")


def export_target(out: Path, fmt: str) -> None:
    """--out names a path export may write: the format's kind of path, outside any run's checkpoints/,
    and new or written by an earlier export (never a file someone else made)."""
    if (
        fmt == "timm"
        and out.suffix not in ("", ".safetensors", *TORCH_SUFFIXES)
        or fmt != "timm"
        and out.suffix not in TORCH_SUFFIXES
    ):
        kinds = "a folder (no suffix), FILE.safetensors or FILE.pth" if fmt == "timm" else "FILE.pth"
        raise ConfigError(f"--out {out}: --format {fmt} writes {kinds}, not '{out.suffix}'")
    if "checkpoints" in out.absolute().parts:
        raise ConfigError(f"--out {out} is inside a run's checkpoints/ folder; export somewhere else")
    taken = out.exists() and not (out.is_dir() and not any(out.iterdir()))
    if taken and not export_record(out).is_file():
        raise ConfigError(
            f"--out {out} exists and was not written by hybrid-distill export; choose a new path "
            "(or delete it yourself)"
        )
