"""The demo end to end in its seconds-long form, on IDX files the test writes."""

import json

import pytest

from hybrid_distill.cli import main


@pytest.mark.slow
def test_fast_demo_writes_results_report_and_figures(idx_folder, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--data", str(idx_folder), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["frozen"]) == {
        "pixels",
        "random_init",
        "teacher_sup",
        "teacher_mae",
        "hybrid",
        "distill_sup",
        "distill_mae",
    }
    assert all(0 <= r["knn"]["top1"] <= 100 and 0 <= r["linear"]["top1"] <= 100 for r in results["frozen"].values())
    assert set(results["finetune"]) == {"hybrid", "random_init"}
    assert results["provenance"]["git_sha"]
    assert "| hybrid |" in (out / "report.md").read_text()
    for figure in ("distance.png", "distance_plain.png", "nmi.png"):
        assert (out / "analysis" / figure).stat().st_size > 0
