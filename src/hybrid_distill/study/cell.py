"""One (row, seed) cell of a study: train, evaluate, analyse, and write cell.json last.

Each stage leaves its own file in the cell's run directory (checkpoints, eval.json,
analysis/analysis.json), so a killed cell resumes at its stage: training through the trainer's
`--resume auto` (the exact next batch), the others from their file. cell.json (written atomically)
marks the cell finished and holds its flat metrics and provenance (config, git SHA, package versions,
teacher files with their SHA-256).
"""
import hashlib
import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..analysis.command import main as analyze_main
from ..config import to_dict
from ..evaluation.features import extract_features
from ..evaluation.finetune import finetune_eval
from ..evaluation.knn import knn_classify
from ..evaluation.linear import linear_probe
from ..files import load_model, sha256_file
from ..provenance import provenance
from ..trainer import train
from .spec import StudyError, cell_config

LAYER_METRICS = ("distance", "distance_plain", "nmi")
BOOKKEEPING = ("step", "epoch", "lr", "img_per_s")  # logged beside the loss parts, not results


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def fingerprint(cfg: DictConfig, spec: DictConfig) -> str:
    """What decides a cell's numbers: its config and the study's evaluation and analysis settings."""
    what = {"config": to_dict(cfg), "evaluate": OmegaConf.to_container(spec.evaluate),
            "analysis": OmegaConf.to_container(spec.analysis)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim(run_dir: Path, print_: str, row: str) -> None:
    """A cell directory belongs to one fingerprint: a changed row must not resume an old run."""
    path = run_dir / "cell_fingerprint.txt"
    if path.is_file() and path.read_text().strip() != print_:
        raise StudyError(f"cell {run_dir} was started with another config or evaluation for row '{row}'; "
                         "restore the study file or delete that directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(print_ + "\n")


def finished_cell(spec: DictConfig, row: str, seed: int) -> dict | None:
    """The cell's results when it is finished under the current study file, else None."""
    cfg = cell_config(spec, row, seed)
    path = run_dir_of(cfg) / "cell.json"
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    if cell["fingerprint"] != fingerprint(cfg, spec):
        raise StudyError(f"cell {path.parent} was made with another config or evaluation for row '{row}'; "
                         "restore the study file or delete that directory")
    check_teacher_files(cell, path.parent)
    return cell


def check_teacher_files(cell: dict, run_dir: Path) -> None:
    """A finished cell was distilled from the teacher files it recorded (SHA-256): a retrained shared
    teacher makes it stale."""
    for name, record in cell["teachers"].items():
        file, digest = record.get("file"), record.get("sha256")
        if file and digest and Path(file).is_file() and sha256_file(file) != digest:
            raise StudyError(f"cell {run_dir} was distilled from another {file} (teacher '{name}' retrained "
                             "since); delete that directory to run it again")


def cached(path: Path, compute) -> dict:
    """compute() once; its JSON result kept at path for a rerun."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result)
    return result


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def evaluate(model, spec: DictConfig, seed: int, train_ds, test_ds) -> dict:
    """k-NN and linear probe on the same frozen CLS features, and fine-tuning, as the study asks."""
    out, ev = {}, spec.evaluate
    if ev.knn or ev.linear:
        bank, test = extract_features(model, train_ds), extract_features(model, test_ds)
        if ev.knn:
            out["knn"] = knn_classify(*bank, *test)
        if ev.linear:
            out["linear"] = linear_probe(*bank, lambda: test)
    if ev.finetune:
        options = OmegaConf.to_container(ev.finetune)
        preset = options.pop("preset", "fashion_mnist")
        result = finetune_eval(model, train_ds, test_ds, preset, **{"seed": seed, **options})
        out["finetune"] = {k: result[k] for k in ("top1", "top5", "config") if k in result}
    return out


def analysis_data(data: str, split: str) -> str:
    """The analyze command's --data: Fashion-MNIST as is, an eval folder's train/ or val/ part."""
    if data == "fashion_mnist" or data.startswith("fashion_mnist:"):
        return data
    return str(Path(data) / ("train" if split == "train" else "val"))


def analyse(models: list[str], spec: DictConfig, data: str, out: Path) -> dict:
    """Attention distance and NMI per layer of models (the analyze command), cached in out."""
    path = out / "analysis.json"
    if not path.is_file():
        a = spec.analysis
        code = analyze_main([*models, "--data", analysis_data(data, a.split), "--split", a.split,
                             "--num-images", str(a.images), "--map-images", "0", "--no-figures", "--out", str(out)])
        if code:
            raise StudyError(f"the analysis of {models} failed (exit code {code}); see the line above")
    return json.loads(path.read_text())


def last_losses(run_dir: Path) -> dict:
    """The last logged training record's loss parts, whatever their names."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(records) if "loss" in r), {})
    return {k: float(v) for k, v in last.items() if k not in BOOKKEEPING and isinstance(v, (int, float))}


def flat_metrics(evals: dict, analysis: dict, losses: dict) -> dict:
    """{'knn/top1', 'linear/top1', 'finetune/top1', 'distance/L1', 'nmi/L6', 'train/loss', ...}."""
    out = {f"{protocol}/{k}": r[k] for protocol, r in evals.items() for k in ("top1", "top5")}
    model = next(iter(analysis["models"].values()))
    out.update({f"{name}/L{i}": v for name in LAYER_METRICS for i, v in enumerate(model[name]["per_layer"], 1)})
    out.update({f"train/{k}": v for k, v in losses.items()})
    return out


def run_cell(spec: DictConfig, row: str, seed: int, data: tuple) -> dict:
    """Train (resuming), evaluate and analyse one cell; returns what cell.json holds.
    data: (evaluation data spec, train split subset, test split subset)."""
    cfg = cell_config(spec, row, seed)
    run_dir, print_ = run_dir_of(cfg), fingerprint(cfg, spec)
    claim(run_dir, print_, row)
    start = time.perf_counter()
    train(cfg, resume="auto")
    model = load_model(str(run_dir))
    evals = cached(run_dir / "eval.json", lambda: evaluate(model, spec, seed, *data[1:]))
    analysis = analyse([str(run_dir)], spec, data[0], run_dir / "analysis")
    cell = {"row": row, "seed": seed, "fingerprint": print_,
            "metrics": flat_metrics(evals, analysis, last_losses(run_dir)),
            "seconds": time.perf_counter() - start, "run_dir": str(run_dir), "config": to_dict(cfg),
            "teachers": json.loads((run_dir / "manifest.json").read_text())["teachers"], "provenance": provenance()}
    write_json(run_dir / "cell.json", cell)
    return cell
