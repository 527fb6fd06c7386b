"""One (row, seed) cell of a study, keyed by content (as DVC and Bazel cache results): a stage is done
when the file named by the hash of its inputs exists, and nothing else decides it.

    OUT/cells/ROW/seedS-KEY/                 KEY: hash of the training config and the teacher files' SHA-256
        checkpoints/, metrics.jsonl, ...     the trainer's run directory (`--resume auto` continues it)
        cell.json                            written when training has finished: config, time, provenance
        results/PROTOCOL-HASH.json           one evaluation protocol under one set of its settings
        results/analysis-HASH/analysis.json  the attention analysis under one set of its settings

A changed row or a retrained teacher is another KEY, so another directory: nothing is adopted, refused or
overwritten. A changed evaluation or analysis setting is another HASH beside the old result, so the
trained student is evaluated again without training.
"""

import hashlib
import json
import shutil
import time
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..analysis.command import main as analyze_main
from ..config import to_dict
from ..evaluation.features import extract_features
from ..evaluation.finetune import finetune_eval
from ..evaluation.knn import knn_classify
from ..evaluation.linear import linear_probe
from ..evaluation.protocols import PROTOCOLS
from ..files import load_model, sha256_file, write_atomic
from ..provenance import provenance
from ..trainer import train
from .spec import StudyError, cell_config

LAYER_METRICS = ("distance", "distance_plain", "nmi")
BOOKKEEPING = ("step", "epoch", "lr", "img_per_s", "time")  # logged beside the loss parts, not results


def digest(what) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


@cache
def file_sha(path: str, mtime_ns: int) -> str:
    return sha256_file(path)


def teacher_shas(cfg: DictConfig) -> dict:
    """{teacher: SHA-256 of its weights file} for teachers given by a file (a study's shared teachers)."""
    out = {}
    for name, t in (cfg.teachers or {}).items():
        path = Path(str(t.weights)) if t.weights else None
        if path is not None and path.is_file():
            out[name] = file_sha(str(path), path.stat().st_mtime_ns)
    return out


# where a run writes and how it reports, not what it computes (the loader's workers draw seeded per sample)
NOT_RESULTS = {
    "": ("name", "output_dir"),
    # data.max_image_pixels guards unreadable input: it skips an image, never changes a readable one
    "data": ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "max_image_pixels"),
    "train": ("log_every", "progress", "tensorboard", "trackers", "ckpt_every_steps", "keep_checkpoints"),
}


ADDED_TEACHER_DEFAULTS = {
    "interpolate_features": False,
    "normalize": "none",
}  # teacher settings added since the published cells were keyed, left out of a key while at their
# default, so a published cell keeps its key (tests/data/study_cell_keys.json)


def student_inputs(cfg: DictConfig) -> dict:
    """The training config less NOT_RESULTS: what decides the trained student, with the teacher files."""
    values, shas = to_dict(cfg), teacher_shas(cfg)
    for section, keys in NOT_RESULTS.items():
        node = values if not section else values[section]
        for key in keys:
            node.pop(key, None)
    for name in shas:  # a teacher file counts by its content, wherever it lies
        values["teachers"][name].pop("weights")
    for teacher in values["teachers"].values():
        for key, default in ADDED_TEACHER_DEFAULTS.items():
            if key in teacher and teacher[key] == default:
                teacher.pop(key)
    return {"config": values, "teachers": shas}


def cell_run(spec: DictConfig, row: str, seed: int) -> tuple[DictConfig, Path]:
    """The cell's training config and run directory, named by the hash of what decides the student."""
    cfg = cell_config(spec, row, seed)
    cfg.name = f"seed{seed}-{digest(student_inputs(cfg))}"
    return cfg, Path(cfg.output_dir) / cfg.name


def protocol_settings(spec: DictConfig, protocol: str) -> dict:
    """What decides one evaluation protocol's numbers for a given student."""
    ev = spec.evaluate
    common = {
        "protocol": protocol,
        "data": ev.data,
        "train_images": ev.train_images,
        "test_images": ev.test_images,
        "bank": "splits.first",
    }  # the bank's images: the study's seeded order (splits.py)
    return {**common, "finetune": OmegaConf.to_container(ev.finetune)} if protocol == "finetune" else common


def analysis_settings(spec: DictConfig) -> dict:
    return {"data": spec.evaluate.data, **OmegaConf.to_container(spec.analysis)}


def protocols(spec: DictConfig) -> list[str]:
    """The registered protocols the study file turns on (`evaluate.NAME`), in the registry's order."""
    return [p for p in PROTOCOLS if spec.evaluate.get(p)]


def result_path(run_dir: Path, spec: DictConfig, protocol: str) -> Path:
    return run_dir / "results" / f"{protocol}-{digest(protocol_settings(spec, protocol))}.json"


def analysis_dir(run_dir: Path, spec: DictConfig) -> Path:
    return run_dir / "results" / f"analysis-{digest(analysis_settings(spec))}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def finished_cell(spec: DictConfig, row: str, seed: int) -> dict | None:
    """The cell's record with its metrics when it is trained, evaluated and analysed under the current
    study file, else None. Reads only; safe beside a running study."""
    _, run_dir = cell_run(spec, row, seed)
    files = [
        run_dir / "cell.json",
        analysis_dir(run_dir, spec) / "analysis.json",
        *(result_path(run_dir, spec, p) for p in protocols(spec)),
    ]
    if not all(f.is_file() for f in files):
        return None
    evals = {p: read_json(result_path(run_dir, spec, p)) for p in protocols(spec)}
    analysis = read_json(files[1])
    return {**read_json(files[0]), "metrics": flat_metrics(evals, analysis, last_losses(run_dir))}


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def evaluate(load, spec: DictConfig, seed: int, train_ds, test_ds, run_dir: Path) -> None:
    """k-NN and linear probe on the same frozen CLS features, and fine-tuning, as the study asks; each
    protocol's result is written as soon as it ends, and one already there is not run again (load() gives
    the student, only when something must run)."""
    todo = [p for p in protocols(spec) if not result_path(run_dir, spec, p).is_file()]
    if not todo:
        return
    model = load()

    def keep(protocol: str, result: dict) -> None:
        write_json(result_path(run_dir, spec, protocol), {**result, "settings": protocol_settings(spec, protocol)})

    if "knn" in todo or "linear" in todo:
        bank, test = extract_features(model, train_ds), extract_features(model, test_ds)
        if "knn" in todo:
            keep("knn", knn_classify(*bank, *test))
        if "linear" in todo:
            keep("linear", linear_probe(*bank, lambda: test))
    if "finetune" in todo:
        options = OmegaConf.to_container(spec.evaluate.finetune)
        preset = options.pop("preset", "fashion_mnist")
        result = finetune_eval(model, train_ds, test_ds, preset, **{"seed": seed, **options})
        keep("finetune", {k: result[k] for k in ("top1", "top5", "config") if k in result})


def analyse(models: list[str], spec: DictConfig, data: str, out: Path) -> dict:
    """Attention distance and NMI per layer of models (the analyze command) in out, made in a temporary
    folder renamed into place when complete: out/analysis.json exists only whole."""
    path = out / "analysis.json"
    if not path.is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        a = spec.analysis
        code = analyze_main(
            [
                *models,
                "--data",
                analysis_data(data, a.split),
                "--split",
                a.split,
                "--num-images",
                str(a.images),
                "--map-images",
                "0",
                "--no-figures",
                "--out",
                str(tmp),
            ]
        )
        if code:
            raise StudyError(f"the analysis of {models} failed (exit code {code}); see the line above")
        write_json(tmp / "settings.json", analysis_settings(spec))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return json.loads(path.read_text())


def analysis_data(data: str, split: str) -> str:
    """The analyze command's --data: Fashion-MNIST as is, an eval folder's train/ or val/ part."""
    if data == "fashion_mnist" or data.startswith("fashion_mnist:"):
        return data
    return str(Path(data) / ("train" if split == "train" else "val"))


def last_losses(run_dir: Path) -> dict:
    """The last logged training record's loss parts, whatever their names."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(records) if "loss" in r), {})
    return {k: float(v) for k, v in last.items() if k not in BOOKKEEPING and isinstance(v, (int, float))}


def head_spread(per_head: list[float]) -> float:
    """Standard deviation over heads of their mean attention distance: how diverse a layer's heads are
    (paper section 2.2 and Fig. 1: a decoder makes the encoder's late heads more diverse)."""
    mean = sum(per_head) / len(per_head)
    return (sum((d - mean) ** 2 for d in per_head) / len(per_head)) ** 0.5


def flat_metrics(evals: dict, analysis: dict, losses: dict) -> dict:
    """{'knn/top1', 'linear/top1', 'finetune/top1', 'distance/L1', 'spread/L1', 'nmi/L6', 'train/loss', ...}."""
    out = {f"{protocol}/{k}": r[k] for protocol, r in evals.items() for k in ("top1", "top5")}
    model = next(iter(analysis["models"].values()))
    out.update({f"{name}/L{i}": v for name in LAYER_METRICS for i, v in enumerate(model[name]["per_layer"], 1)})
    per_head = model["distance"]["per_head"]  # (layers, H)
    out.update({f"spread/L{i}": head_spread(h) for i, h in enumerate(per_head, 1)})
    out.update({f"head_distance/L{i}/H{h}": v for i, heads in enumerate(per_head, 1) for h, v in enumerate(heads)})
    out.update({f"train/{k}": v for k, v in losses.items()})
    return out


def run_cell(spec: DictConfig, row: str, seed: int, data: tuple) -> dict:
    """Train (resuming), evaluate and analyse one cell; returns its finished record.
    data: (evaluation data spec, train split subset, test split subset)."""
    cfg, run_dir = cell_run(spec, row, seed)
    if not (run_dir / "cell.json").is_file():
        start = time.perf_counter()
        train(cfg, resume="auto")
        write_json(
            run_dir / "cell.json",
            {
                "row": row,
                "seed": seed,
                "seconds": time.perf_counter() - start,
                "provenance": provenance(),
                "run_dir": str(run_dir),
                "config": to_dict(cfg),
                "teachers": json.loads((run_dir / "manifest.json").read_text())["teachers"],
            },
        )
    evaluate(lambda: load_model(str(run_dir)), spec, seed, *data[1:], run_dir)
    analyse([str(run_dir)], spec, data[0], analysis_dir(run_dir, spec))
    return finished_cell(spec, row, seed)
