"""One (row, seed) cell of a study: train, evaluate, analyse, and write cell.json last.

Each stage leaves its own file in the cell's run directory (checkpoints, eval.json,
analysis/analysis.json), so a killed cell resumes at its stage: training through the trainer's
`--resume auto` (the exact next batch), the others from their file. cell.json (written atomically)
marks the cell trained and holds its flat metrics and provenance (config, git SHA, package versions,
teacher files with their SHA-256).

The fingerprint covers the training config only. Each evaluation protocol and the analysis keep the
settings that made them beside their results, so changing `evaluate` or `analysis` in the study file
re-evaluates the finished students (trained once) instead of refusing or retraining them.
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
from ..files import load_model, sha256_file, write_atomic
from ..provenance import provenance
from ..trainer import train
from .spec import StudyError, cell_config

LAYER_METRICS = ("distance", "distance_plain", "nmi")
BOOKKEEPING = ("step", "epoch", "lr", "img_per_s")  # logged beside the loss parts, not results


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def digest(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(cfg: DictConfig) -> str:
    """What decides a cell's trained student: its config."""
    return digest({"config": to_dict(cfg)})


def legacy_fingerprint(cfg: DictConfig, spec: DictConfig) -> str:
    """The fingerprint of cells begun up to git 28f088b: config, evaluation and analysis together."""
    return digest({"config": to_dict(cfg), "evaluate": OmegaConf.to_container(spec.evaluate),
                   "analysis": OmegaConf.to_container(spec.analysis)})


def protocol_settings(spec: DictConfig, protocol: str) -> dict:
    """What decides one evaluation protocol's numbers for a given student."""
    ev = spec.evaluate
    common = {"data": ev.data, "train_images": ev.train_images, "test_images": ev.test_images}
    return {**common, "finetune": OmegaConf.to_container(ev.finetune)} if protocol == "finetune" else common


def analysis_settings(spec: DictConfig) -> dict:
    return {"data": spec.evaluate.data, **OmegaConf.to_container(spec.analysis)}


def protocols(spec: DictConfig) -> list[str]:
    return [p for p in ("knn", "linear", "finetune") if spec.evaluate[p]]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def same_config(cell: dict, cfg: DictConfig) -> bool:
    as_json = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731  (cell.json's own encoding)
    return as_json(cell.get("config")) == as_json(to_dict(cfg))


def stored_fingerprint(run_dir: Path) -> str | None:
    path = run_dir / "cell_fingerprint.txt"
    return path.read_text().strip() if path.is_file() else None


def legacy_state(run_dir: Path, cfg: DictConfig, spec: DictConfig) -> str | None:
    """'stamp': a cell begun up to git 28f088b whose fingerprint matches the current study file (its
    evaluation and analysis were made with today's settings); 'config': a finished one of the same training
    config whose evaluation or analysis settings changed since (they run again); else None."""
    stored = stored_fingerprint(run_dir)
    if stored is None or stored == fingerprint(cfg):
        return None
    if stored == legacy_fingerprint(cfg, spec):
        return "stamp"
    return "config" if same_config(read_json(run_dir / "cell.json"), cfg) else None


def adopt_legacy(run_dir: Path, cfg: DictConfig, spec: DictConfig) -> None:
    """A legacy cell in today's form: with 'stamp', its evaluation and analysis get the settings that made
    them; with 'config', they get none and run again. The fingerprint file is written last: a crash midway
    leaves the cell adoptable again."""
    state = legacy_state(run_dir, cfg, spec)
    if state is None:
        return
    evals, analysis = run_dir / "eval.json", run_dir / "analysis" / "analysis.json"
    if state == "stamp" and evals.is_file():
        write_json(evals, {p: {**r, "settings": protocol_settings(spec, p)} for p, r in read_json(evals).items()})
    if state == "stamp" and analysis.is_file() and parses(analysis):
        write_json(analysis.parent / "settings.json", analysis_settings(spec))
    if (run_dir / "cell.json").is_file():
        write_json(run_dir / "cell.json", {**read_json(run_dir / "cell.json"), "fingerprint": fingerprint(cfg)})
    write_text(run_dir / "cell_fingerprint.txt", fingerprint(cfg) + "\n")


def parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except ValueError:  # a half file from a process killed while writing it
        return False


def check_owner(run_dir: Path, cfg: DictConfig, row: str) -> None:
    """A cell directory belongs to one training config: a changed row must not resume an old run, and a
    directory with files but no fingerprint is someone else's."""
    stored, cell = stored_fingerprint(run_dir), run_dir / "cell.json"
    foreign = (stored != fingerprint(cfg) if stored is not None
               else run_dir.is_dir() and any(run_dir.iterdir()))
    if foreign or cell.is_file() and not same_config(read_json(cell), cfg):
        raise StudyError(f"cell {run_dir} was started with another config for row '{row}'; restore the study file "
                         "or delete that directory")


def claim(run_dir: Path, cfg: DictConfig, spec: DictConfig, row: str) -> None:
    """Adopt a legacy cell, check the directory is this config's, and mark it so."""
    adopt_legacy(run_dir, cfg, spec)
    check_owner(run_dir, cfg, row)
    if stored_fingerprint(run_dir) is None:
        write_text(run_dir / "cell_fingerprint.txt", fingerprint(cfg) + "\n")


def stamped(path: Path, settings: dict) -> bool:
    """path holds exactly these settings (the ones an analysis was made with)."""
    return path.is_file() and read_json(path) == settings


def finished_cell(spec: DictConfig, row: str, seed: int, write: bool = True) -> dict | None:
    """The cell's results when it is trained, evaluated and analysed under the current study file, else
    None; its metrics are read again from the stage files, so a metric added since covers old cells.
    write=False (`study --report`, beside a running study) reads a legacy cell as it is, writing nothing."""
    cfg = cell_config(spec, row, seed)
    run_dir = run_dir_of(cfg)
    if not (run_dir / "cell.json").is_file():
        return None
    legacy = legacy_state(run_dir, cfg, spec)
    if write:
        claim(run_dir, cfg, spec, row)
        legacy = None
    elif legacy is None:
        check_owner(run_dir, cfg, row)
    cell = read_json(run_dir / "cell.json")
    check_teacher_files(cell, run_dir)
    evals, settings = read_json(run_dir / "eval.json"), run_dir / "analysis" / "settings.json"
    current = legacy == "stamp" or (
        all(evals.get(p, {}).get("settings") == protocol_settings(spec, p) for p in protocols(spec))
        and stamped(settings, analysis_settings(spec)))
    if legacy == "config" or not current:
        return None  # trained; its evaluation or analysis is of other settings: run_cell redoes that part
    analysis = read_json(run_dir / "analysis" / "analysis.json")
    return {**cell, "metrics": flat_metrics({p: evals[p] for p in protocols(spec)}, analysis, last_losses(run_dir))}


def check_teacher_files(cell: dict, run_dir: Path) -> None:
    """A finished cell was distilled from the teacher files it recorded (SHA-256): a retrained shared
    teacher makes it stale."""
    for name, record in cell["teachers"].items():
        file, sha = record.get("file"), record.get("sha256")
        if file and sha and Path(file).is_file() and sha256_file(file) != sha:
            raise StudyError(f"cell {run_dir} was distilled from another {file} (teacher '{name}' retrained "
                             "since); delete that directory to run it again")


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def evaluate(load, spec: DictConfig, seed: int, train_ds, test_ds, path: Path) -> dict:
    """k-NN and linear probe on the same frozen CLS features, and fine-tuning, as the study asks. Each
    protocol is kept in path with its settings as soon as it ends: one whose settings are unchanged is
    read back, the others run (load() gives the student, only when something must run)."""
    kept = read_json(path)  # every stored protocol stays in the file, asked for now or not
    todo = [p for p in protocols(spec) if kept.get(p, {}).get("settings") != protocol_settings(spec, p)]
    model, ev = load() if todo else None, spec.evaluate

    def keep(protocol: str, result: dict) -> None:
        kept[protocol] = {**result, "settings": protocol_settings(spec, protocol)}
        write_json(path, kept)

    if "knn" in todo or "linear" in todo:
        bank, test = extract_features(model, train_ds), extract_features(model, test_ds)
        if "knn" in todo:
            keep("knn", knn_classify(*bank, *test))
        if "linear" in todo:
            keep("linear", linear_probe(*bank, lambda: test))
    if "finetune" in todo:
        options = OmegaConf.to_container(ev.finetune)
        preset = options.pop("preset", "fashion_mnist")
        result = finetune_eval(model, train_ds, test_ds, preset, **{"seed": seed, **options})
        keep("finetune", {k: result[k] for k in ("top1", "top5", "config") if k in result})
    return {p: kept[p] for p in protocols(spec)}


def analysis_data(data: str, split: str) -> str:
    """The analyze command's --data: Fashion-MNIST as is, an eval folder's train/ or val/ part."""
    if data == "fashion_mnist" or data.startswith("fashion_mnist:"):
        return data
    return str(Path(data) / ("train" if split == "train" else "val"))


def analyse(models: list[str], spec: DictConfig, data: str, out: Path) -> dict:
    """Attention distance and NMI per layer of models (the analyze command), kept in out with the settings
    that made it (settings.json, written after analysis.json: an analysis without it is made again)."""
    path, settings = out / "analysis.json", out / "settings.json"
    if not (path.is_file() and stamped(settings, analysis_settings(spec))):
        settings.unlink(missing_ok=True)
        a = spec.analysis
        code = analyze_main([*models, "--data", analysis_data(data, a.split), "--split", a.split,
                             "--num-images", str(a.images), "--map-images", "0", "--no-figures", "--out", str(out)])
        if code:
            raise StudyError(f"the analysis of {models} failed (exit code {code}); see the line above")
        write_json(settings, analysis_settings(spec))
    return json.loads(path.read_text())


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
    out.update({f"spread/L{i}": head_spread(h) for i, h in enumerate(model["distance"]["per_head"], 1)})
    out.update({f"train/{k}": v for k, v in losses.items()})
    return out


def run_cell(spec: DictConfig, row: str, seed: int, data: tuple) -> dict:
    """Train (resuming), evaluate and analyse one cell; returns what cell.json holds. A trained cell (one
    with a cell.json) is only evaluated and analysed again; its training time and provenance stay.
    data: (evaluation data spec, train split subset, test split subset)."""
    cfg = cell_config(spec, row, seed)
    run_dir = run_dir_of(cfg)
    claim(run_dir, cfg, spec, row)
    start, trained = time.perf_counter(), read_json(run_dir / "cell.json")
    if not trained:  # cell.json is written last: a cell that has one is trained
        train(cfg, resume="auto")
    evals = evaluate(lambda: load_model(str(run_dir)), spec, seed, *data[1:], run_dir / "eval.json")
    analysis = analyse([str(run_dir)], spec, data[0], run_dir / "analysis")
    now = {"seconds": time.perf_counter() - start, "provenance": provenance()}
    cell = {"row": row, "seed": seed, "fingerprint": fingerprint(cfg),
            "metrics": flat_metrics(evals, analysis, last_losses(run_dir)),
            **({k: trained[k] for k in ("seconds", "provenance")} if trained else now),
            **({"reevaluated": now} if trained else {}),
            "run_dir": str(run_dir), "config": to_dict(cfg),
            "teachers": json.loads((run_dir / "manifest.json").read_text())["teachers"]}
    write_json(run_dir / "cell.json", cell)
    return cell
