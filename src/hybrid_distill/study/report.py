"""Finished cells -> study.json (every number) and study.md (the tables), and the per-layer figures."""

import json
import re
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..provenance import provenance
from . import claims as paper_claims
from .figures import layer_figure
from .spec import reference_row, run_rows
from .stats import LEVEL, paired, summary

INTERVAL_NOTE = (
    f"{LEVEL:.0%} interval: mean +- t(0.975, n-1) * s / sqrt(n) (Student t, s the sample standard "
    "deviation with n-1); paired differences: the same over the per-seed differences row - reference"
)
ACCURACY = ("knn/top1", "linear/top1", "finetune/top1")
LAYER_FIGURES = ("distance", "nmi")


def per_seed(cells: list[dict]) -> dict:
    """{row: {metric: {seed: value}}} from cell.json contents."""
    out: dict = {}
    for cell in cells:
        for metric, value in cell["metrics"].items():
            out.setdefault(cell["row"], {}).setdefault(metric, {})[cell["seed"]] = value
    return out


def aggregate(spec: DictConfig, cells: list[dict]) -> dict:
    """Per row and metric: summary over seeds; per non-reference row: paired differences."""
    values, ref = per_seed(cells), reference_row(spec)
    rows = {
        row: {
            m: {**summary(list(v.values())), "values": {str(s): x for s, x in v.items()}}
            for m, v in values.get(row, {}).items()
        }
        for row in run_rows(spec)
    }
    diffs = {
        row: {m: paired(v, values[ref][m]) for m, v in values.get(row, {}).items() if m in values.get(ref, {})}
        for row in run_rows(spec)
        if row != ref
    }
    return {"rows": rows, "paired": diffs, "reference": ref}


def layers(row: dict, metric: str) -> list[dict]:
    """The summaries of metric/L1, metric/L2, ... of a row, in layer order."""
    found = {int(m.group(1)): s for name, s in row.items() if (m := re.fullmatch(rf"{metric}/L(\d+)", name))}
    return [found[i] for i in sorted(found)]


def teacher_layers(teacher_analysis: dict | None, metric: str) -> dict:
    if not teacher_analysis:
        return {}
    return {label: m[metric]["per_layer"] for label, m in teacher_analysis["models"].items()}


def draw(spec: DictConfig, result: dict, teacher_analysis: dict | None, out: Path) -> list[str]:
    note = f"band: {LEVEL:.0%} Student-t interval over seeds; dashed: shared teachers"
    paths = []
    for metric in LAYER_FIGURES:
        rows = {row: layers(r, metric) for row, r in result["rows"].items() if layers(r, metric)}
        if rows:
            uniform = (
                next(iter(teacher_analysis["models"].values()))["uniform_distance"]
                if teacher_analysis and metric == "distance"
                else None
            )
            paths.append(
                str(
                    layer_figure(
                        rows, teacher_layers(teacher_analysis, metric), metric, note, out / f"{metric}.png", uniform
                    )
                )
            )
    return paths


def fmt(s: dict | None, digits: int = 2) -> str:
    if not s:
        return ""
    if s["ci95"] is None:
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    lo, hi = s["ci95"]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(title: str, rows: dict, metrics: list[str], digits: int = 2) -> list[str]:
    if not metrics or not rows:
        return []
    head = f"| row | {' | '.join(metrics)} |"
    body = [f"| {row} | {' | '.join(fmt(r.get(m), digits) for m in metrics)} |" for row, r in rows.items()]
    return [f"### {title}", "", head, "|---" * (len(metrics) + 1) + "|", *body, ""]


def present(rows: dict, names) -> list[str]:
    return [m for m in names if any(m in r for r in rows.values())]


def teacher_head_table(heads: dict) -> list[str]:
    """Each shared teacher's per-head attention distance over the uniform-attention distance, per layer."""
    if not heads:
        return []
    depth = max(len(t["per_head"]) for t in heads.values())
    lines = [
        "### Shared teachers' attention distance per head (x the uniform-attention distance)",
        "",
        "| teacher | " + " | ".join(f"L{i}" for i in range(1, depth + 1)) + " |",
        "|---" * (depth + 1) + "|",
    ]
    for name, t in heads.items():
        lines.append(
            f"| {name} | "
            + " | ".join(", ".join(f"{d / t['uniform']:.2f}" for d in layer) for layer in t["per_head"])
            + " |"
        )
    return lines + [""]


def markdown(spec: DictConfig, result: dict, teachers: dict, cells_total: int, figures: list[str]) -> str:
    rows, prov = result["rows"], result["provenance"]
    n_cells = sum(len(c) for c in result["cells"].values())
    lines = [
        f"# Study {spec.name}",
        "",
        f"{n_cells} of {cells_total} cells finished; seeds {list(spec.seeds)}; reference row "
        f"`{result['reference']}`; git {prov['git_sha']}, torch {prov['packages']['torch']}, "
        f"timm {prov['packages']['timm']}, {prov['device']}.",
        "",
        f"Mean ± std [{INTERVAL_NOTE}].",
        "",
    ]
    if teachers:
        held_out = all("split_seed" in t for t in teachers.values())  # the gate of splits.py (git a41c725 on)
        where = (
            "training images held out from every model's training (the end of the study's order)"
            if held_out
            else "the last training images in file order, NOT held out: many are the teachers' own training "
            "images (the gate before git a41c725; docs/replication/README.md)"
        )
        lines += [
            f"### Shared teachers (k-NN top-1 on {where}; never the test split)",
            "",
            "| teacher | kind | k-NN | raw pixels | bank / held out |",
            "|---|---|---|---|---|",
            *[
                f"| {n} | {t['kind']} | {t['knn_top1']:.2f} | {t['pixels_knn_top1']:.2f} | "
                f"{t['bank']} / {t['heldout']} |"
                for n, t in teachers.items()
            ],
            "",
        ]
    lines += teacher_head_table(result.get("teacher_heads", {}))
    accuracy = present(rows, ACCURACY)
    data = spec.evaluate.data
    split = "the test split" if not data or data.startswith("fashion_mnist") else f"{data}/val (the evaluation split)"
    lines += table(f"Top-1 accuracy (%) on {split}", rows, accuracy)
    lines += table(f"Paired differences against `{result['reference']}` (row - reference)", result["paired"], accuracy)
    layers_judged = list(spec.claims.relation_layers) if spec.claims is not None else []
    heads = [
        m
        for m in sorted({m for r in rows.values() for m in r if m.startswith("head_distance/")})
        if int(m.split("/")[1][1:]) in layers_judged
    ]
    uniform = next(iter(result.get("teacher_heads", {}).values()), {}).get("uniform")
    lines += table(
        "attention distance per head at the relation layers (px"
        + (f"; uniform attention {uniform:.2f}" if uniform else "")
        + "; the teachers' per head above, as a ratio)",
        rows,
        heads,
        2,
    )
    for metric, digits in (("distance", 2), ("spread", 2), ("nmi", 4)):
        names = sorted(
            {m for r in rows.values() for m in r if m.startswith(f"{metric}/L")}, key=lambda m: int(m.split("L")[-1])
        )
        lines += table(f"{metric} per layer", rows, names, digits)
    if result.get("claims"):
        lines += paper_claims.markdown(result["claims"], (spec.claims or {}).get("registered", ""))
    lines += [
        "Figures: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in figures),
        "",
        "Every cell's numbers, config and provenance: study.json and cells/ROW/seedN/cell.json.",
        "",
    ]
    return "\n".join(lines)


def headline(spec: DictConfig, result: dict, cells: list[dict], cells_total: int) -> dict:
    """The few numbers a reader (and the demo) quotes: per row the test top-1 means with their 95%
    intervals, the claims' verdicts, and where and how long it ran."""
    prov = result["provenance"]
    rows = {
        row: {m: [r[m]["mean"], *(r[m]["ci95"] or [None, None]), r[m]["n"]] for m in ACCURACY if m in r}
        for row, r in result["rows"].items()
        if r
    }  # rows with finished cells
    return {
        "study": spec.name,
        "git_sha": prov["git_sha"],
        "device": prov["device"],
        "cpu": prov.get("cpu"),
        "cells": f"{len(cells)} of {cells_total}",
        "cell_hours": sum(c["seconds"] for c in cells) / 3600,
        "rows": rows,
        "columns": "mean, 95% interval low, high, seeds",
        "claims": result.get("claims", []),
    }


def teacher_facts(teacher_analysis: dict) -> dict:
    """{teacher: {distance, nmi (per layer), per_head (distance), uniform}} from the teachers' analysis."""
    return {
        name: {
            "distance": m["distance"]["per_layer"],
            "nmi": m["nmi"]["per_layer"],
            "per_head": m["distance"]["per_head"],
            "uniform": m["uniform_distance"],
        }
        for name, m in teacher_analysis["models"].items()
    }


def judged(spec: DictConfig, result: dict, teacher_analysis: dict) -> list[dict]:
    roles = paper_claims.ClaimRoles(**OmegaConf.to_container(spec.claims))
    return [asdict(c) for c in paper_claims.judge_claims(result, teacher_facts(teacher_analysis), roles)]


def write_report(
    spec: DictConfig,
    cells: list[dict],
    teachers: dict,
    teacher_analysis: dict | None,
    cells_total: int,
    figures: bool = True,
) -> dict:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        **aggregate(spec, cells),
        "interval": INTERVAL_NOTE,
        "provenance": provenance(),
        "cells": {row: {str(c["seed"]): c["run_dir"] for c in cells if c["row"] == row} for row in run_rows(spec)},
        "teachers": teachers,
        "study": OmegaConf.to_container(spec, enum_to_str=True),
    }
    if teacher_analysis:
        result["teacher_heads"] = {
            n: {k: t[k] for k in ("per_head", "uniform")} for n, t in teacher_facts(teacher_analysis).items()
        }
    if spec.claims is not None and teacher_analysis:
        result["claims"] = judged(spec, result, teacher_analysis)
    names = [str(out / f"{metric}.png") for metric in LAYER_FIGURES]
    result["figures"] = (
        draw(spec, result, teacher_analysis, out) if figures else [p for p in names if Path(p).is_file()]
    )
    (out / "study.json").write_text(json.dumps(result, indent=2))
    (out / "study.md").write_text(markdown(spec, result, teachers, cells_total, result["figures"]))
    (out / "headline.json").write_text(json.dumps(headline(spec, result, cells, cells_total), indent=2))
    return result
