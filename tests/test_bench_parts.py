"""The bench's extra parts (scripts/gpu_check.sh runs them on a GPU) run on the CPU with tiny models."""
import json
import os
import signal

import pytest
import torch

from hybrid_distill.bench.command import GRAPHS, _time_up, main as bench_main, measure, variants
from hybrid_distill.bench.phases import Switches
from hybrid_distill.bench.report import main as report_main

TINY_RUN = ["--smoke", "--device", "cpu", "--steps", "1", "--warmup", "0"]


def test_versus_distill_times_both_steps_in_one_process(tmp_path, capsys):
    out = tmp_path / "versus.json"
    assert bench_main(["--versus-distill", *TINY_RUN, "--batch", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["median_step_s"]) == {"hybrid", "distill_clip"}
    assert result["hybrid_over_distill"] == pytest.approx(result["median_step_s"]["hybrid"]
                                                          / result["median_step_s"]["distill_clip"])
    assert all(g > 0 for g in result["gflop_per_image"].values())
    assert "Hybrid / Distill-CLIP step time" in capsys.readouterr().out
    report_main([str(tmp_path)])
    report = capsys.readouterr().out
    assert "[fp8] missing" in report and f"{result['hybrid_over_distill']:.2f}x" in report


def test_input_pipeline_bench_gives_per_core_rates_and_cores_per_gpu(tmp_path, capsys):
    out = tmp_path / "input.json"
    argv = ["--input-pipeline", str(tmp_path / "jpegs"), "--make", "6", "--seconds", "0.2", "--device", "cpu",
            "--step-img-s", "1000", "--out", str(out)]
    assert bench_main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"pil", "torchvision cpu", "gpu loader side"}  # no GPU here
    for row in rows.values():
        assert row["images"] > 0 and row["cores_per_gpu"] == pytest.approx(1000 * row["cpu_s_per_image"])
    assert "cores per GPU" in capsys.readouterr().out


def test_batch_sweep_reports_every_batch_that_ran(tmp_path):
    out = tmp_path / "sweep.json"
    assert bench_main(["--batch-sweep", *TINY_RUN, "--batches", "2,3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["batch"] for r in result["rows"]] == [2, 3] and result["largest_batch"] == 3


def test_cuda_graphs_variant_only_with_a_compiled_student():
    sw = Switches(compile_student=True, compile_teachers=True)
    runs = variants(sw, torch.device("cpu"), ablation=False, graphs=True)
    assert runs[GRAPHS].cuda_graphs and runs[GRAPHS].compile_student and not runs["optimised"].cuda_graphs
    assert GRAPHS not in variants(Switches(), torch.device("cpu"), ablation=False, graphs=True)


class FailingBench:
    def step(self, sw, images):
        if sw == "broken":
            raise RuntimeError("no graphs here")
        return {"student": 0.1}


def test_a_failing_extra_variant_is_dropped_and_the_others_measured(capsys):
    runs = {"plain": None, "optimised": "ok", GRAPHS: "broken"}
    records = measure(FailingBench(), runs, iter(lambda: torch.zeros(1), None), warmup=1, steps=2)
    assert set(records) == {"plain", "optimised"} and len(records["optimised"]) == 2
    assert "failed and is dropped: RuntimeError: no graphs here" in capsys.readouterr().err


class TimedOutBench:
    """Its fifth step receives SIGTERM, as from `timeout` in scripts/gpu_check.sh."""
    calls = 0

    def step(self, sw, images):
        self.calls += 1
        if self.calls == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"student": 0.1}


def test_sigterm_reports_the_timed_repeats_done(capsys):
    previous = signal.signal(signal.SIGTERM, _time_up)
    try:
        runs = {"plain": None, "optimised": "ok"}
        records = measure(TimedOutBench(), runs, iter(lambda: torch.zeros(1), None), warmup=1, steps=5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {n: len(r) for n, r in records.items()} == {"plain": 1, "optimised": 1}  # warm-up, one timed repeat, then stopped
    assert "stopped by SIGTERM" in capsys.readouterr().err
