"""Figures that documents quote by hand equal the generated files they come from (a figure lives in one file)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPLICATION = ROOT / "docs" / "replication"
CURVES = REPLICATION / "locality" / "teachers"


def curve(name: str) -> dict:
    """{epoch: the lowest head's distance / uniform} of a published teacher curve."""
    return {p["epoch"]: p["min_ratio"] for p in json.loads((CURVES / f"{name}.curve.json").read_text())}


def table_row(name: str) -> list[str]:
    line = next(ln for ln in (REPLICATION / "README.md").read_text().splitlines() if ln.startswith(f"| `{name}` |"))
    return [v.strip() for v in line.split("|")[4].split(",")]


@pytest.mark.parametrize("name", ["mae", "mae_shallow", "mae_m25"])
def test_the_mae_search_table_quotes_each_curve(name):
    points = curve(name)
    quoted = table_row(name)
    for epoch, text in zip(range(0, 35, 5), quoted):
        if text != "-":
            assert float(text) == pytest.approx(points[epoch], abs=0.5 * 10 ** -(len(text.split(".")[1]))), epoch


def test_readme_quotes_the_grown_teachers_last_point():
    last = curve("mae_m25")[30]
    readme = (ROOT / "README.md").read_text()
    assert f"lowest head {last:.3f} x uniform by epoch 30" in readme


def test_the_throughput_paragraph_quotes_the_measured_files():
    text = " ".join((REPLICATION / "README.md").read_text().split())
    quiet = json.loads((REPLICATION / "throughput" / "quiet.json").read_text())["results"]
    shared = json.loads((REPLICATION / "throughput" / "shared.json").read_text())["results"]
    one, two = round(quiet["1 thread, alone"]["total"]), round(quiet["2 threads, alone"]["total"])
    both = round(quiet["two cells at once, 1 thread each"]["total"])
    assert f"one cell at 1 / 2 threads {one} / {two} img/s, two cells at once on 1 thread each {both} in all" in text
    s1, s2 = round(shared["1 thread, alone"]["total"]), round(shared["2 threads, alone"]["total"])
    assert re.search(rf"one cell at 1 / 2 threads {s1} / {s2} img/s", text)


def test_readme_quotes_the_relation_scale_from_the_196_token_study():
    rows = json.loads((REPLICATION / "study.json").read_text())["rows"]
    mean = lambda row, metric: rows[row][f"train/{metric}"]["mean"]  # noqa: E731
    readme = " ".join((ROOT / "README.md").read_text().split())
    raw, scaled, alpha0 = (mean(r, "sup/feat") for r in ("hybrid", "hybrid_scaled", "hybrid_alpha0"))
    raw_rel = (mean("hybrid", "mim/rel3") + mean("hybrid", "mim/rel4")) / raw
    scaled_rel = (mean("hybrid_scaled", "mim/rel3") + mean("hybrid_scaled", "mim/rel4")) / scaled
    assert (
        f"relation loss is {raw_rel:.1f}x the feature loss and the gradient norm {mean('hybrid', 'grad_norm'):.1f}"
        in readme
    )
    assert f"{raw / alpha0:.2f}x as high as with alpha = 0 ({raw:.3f} against {alpha0:.3f})" in readme
    scaled_norm = mean("hybrid_scaled", "grad_norm")
    assert f"relation loss is {scaled_rel:.2f}x the feature loss, the gradient norm {scaled_norm:.2f}" in readme
    assert f"{scaled / alpha0:.2f}x as high ({scaled:.3f})" in readme
