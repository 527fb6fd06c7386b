"""The replication's headline numbers for the demo's report.

The demo (49 tokens, teachers trained for minutes) is too small to support the paper's claims; the
study `configs/studies/fashion_mnist_196.yaml` (196 tokens, three seeds per row) tests them. Its
`headline.json` is copied beside this file as replication.json when the study is rerun, and the demo
quotes it as it is: the numbers, the verdicts, the commit and the machine.
"""

import json
from pathlib import Path

FILE = Path(__file__).with_name("replication.json")


def cell(values: list | None) -> str:
    """[mean, low, high, n] -> '84.12 [83.50, 84.74]'."""
    if not values:
        return ""
    mean, lo, hi, _ = values
    return f"{mean:.2f}" if lo is None else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def replication_lines(path: Path = FILE) -> list[str]:
    if not path.is_file():
        return ["No replication is recorded in this build: see README, 'Does it reproduce the paper?'."]
    h = json.loads(path.read_text())
    lines = [
        f"## The paper's claims at ViT-B's token count: study {h['study']}",
        "",
        f"Recorded replication (not rerun by the demo): git {h['git_sha']}, {h['cpu'] or h['device']}, "
        f"{h['cells']} cells, {h['cell_hours']:.1f} h of cell time. Test top-1 (%), mean [95% interval] "
        "over seeds:",
        "",
        "| row | fine-tune | linear | k-NN |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {row} | {cell(m.get('finetune/top1'))} | {cell(m.get('linear/top1'))} | {cell(m.get('knn/top1'))} |"
        for row, m in h["rows"].items()
    ]
    lines += [
        "",
        *[f"- ({c['name']}) {c['text']}: **{c['verdict']}** ({c['why']})" for c in h["claims"]],
        "",
        "Verdicts as the study's claims.py judges them (held only when every 95% interval excludes 0 in the "
        "claimed direction); docs/replication/README.md gives the whole account.",
        "",
    ]
    return lines
