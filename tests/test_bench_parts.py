"""The bench's extra parts (scripts/gpu_check.sh runs them on a GPU) run on the CPU with tiny models."""

import json
import os
import signal

import pytest
import torch

from hybrid_distill.bench.command import main as bench_main
from hybrid_distill.bench.command import measure
from hybrid_distill.bench.report import main as report_main
from hybrid_distill.bench.stop import Stop

TINY_RUN = ["--smoke", "--device", "cpu", "--steps", "1", "--warmup", "0"]


def test_versus_distill_times_both_steps_in_one_process(tmp_path, capsys):
    out = tmp_path / "versus.json"
    assert bench_main(["--versus-distill", *TINY_RUN, "--batch", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["median_step_s"]) == {"hybrid", "distill_clip"}
    assert result["hybrid_over_distill"] == pytest.approx(
        result["median_step_s"]["hybrid"] / result["median_step_s"]["distill_clip"]
    )
    assert all(g > 0 for g in result["gflop_per_image"].values())
    assert "Hybrid / Distill-CLIP step time" in capsys.readouterr().out
    report_main([str(tmp_path)])
    report = capsys.readouterr().out
    assert "[fp8] missing" in report and f"{result['hybrid_over_distill']:.2f}x" in report


def test_input_pipeline_bench_gives_per_core_rates_and_cores_per_gpu(tmp_path, capsys):
    out = tmp_path / "input.json"
    argv = [
        "--input-pipeline",
        str(tmp_path / "jpegs"),
        "--make",
        "6",
        "--seconds",
        "0.2",
        "--device",
        "cpu",
        "--step-img-s",
        "1000",
        "--out",
        str(out),
    ]
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


class FailingBench:
    def step(self, sw, images, profile=False):
        if sw == "broken":
            raise RuntimeError("no graphs here")
        return {"step": 0.1}


def test_a_failing_extra_variant_is_dropped_and_the_others_measured(capsys):
    runs = {"plain": None, "optimised": "ok", "- compile": "broken"}
    records = measure(FailingBench(), runs, iter(lambda: torch.zeros(1), None), warmup=1, steps=2)
    assert set(records) == {"plain", "optimised"} and len(records["optimised"]) == 2
    assert "failed and is dropped: RuntimeError: no graphs here" in capsys.readouterr().err


class ProfiledBench:
    def __init__(self):
        self.profiled = []

    def step(self, sw, images, profile=False):
        if profile:
            self.profiled.append(sw)
            return {"phases": {"losses": 0.2}}
        return {"step": 0.1}


def test_the_last_warm_up_step_of_each_variant_gives_its_phases_and_is_not_timed():
    bench, phases = ProfiledBench(), {}
    runs = {"plain": None, "optimised": "ok"}
    records = measure(bench, runs, iter(lambda: torch.zeros(1), None), warmup=2, steps=2, phases=phases)
    assert bench.profiled in ([None, "ok"], ["ok", None]) and phases == {n: {"losses": 0.2} for n in runs}
    assert {n: [t["step"] for t in r] for n, r in records.items()} == {"plain": [0.1, 0.1], "optimised": [0.1, 0.1]}


class TimedOutBench:
    """Its fifth step receives SIGTERM, as from `timeout` in scripts/gpu_check.sh."""

    calls = 0

    def step(self, sw, images, profile=False):
        self.calls += 1
        if self.calls == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"step": 0.1}


def test_sigterm_lets_the_step_in_flight_finish_and_reports_the_repeats_done(capsys):
    runs = {"plain": None, "optimised": "ok"}
    with Stop().watching() as stop:
        records = measure(TimedOutBench(), runs, iter(lambda: torch.zeros(1), None), warmup=1, steps=5, stop=stop)
    # warm-up: plain, optimised; repeat 2: optimised, plain; repeat 3: plain gets SIGTERM, finishes, is kept
    assert {n: len(r) for n, r in records.items()} == {"plain": 2, "optimised": 1}
    err = capsys.readouterr().err
    assert "stopped (SIGTERM)" in err and "plain: " in err  # warm-up steps say how long they took (compiling)
    assert signal.getsignal(signal.SIGTERM) is not stop.signalled  # the handler is restored


def test_a_deadline_stops_before_the_next_step_and_partial_repeats_are_written(capsys, tmp_path):
    seen = []
    records = measure(
        FailingBench(),
        {"plain": None, "optimised": "ok"},
        iter(lambda: torch.zeros(1), None),
        warmup=1,
        steps=3,
        stop=Stop(deadline_s=0.0),
        on_repeat=seen.append,
    )
    assert records == {} and seen == [] and "stopped (deadline)" in capsys.readouterr().err
    records = measure(
        FailingBench(),
        {"plain": None, "optimised": "ok"},
        iter(lambda: torch.zeros(1), None),
        warmup=1,
        steps=2,
        on_repeat=lambda r: seen.append({n: len(v) for n, v in r.items()}),
    )
    assert seen == [{"plain": 0, "optimised": 0}, {"plain": 1, "optimised": 1}, {"plain": 2, "optimised": 2}]
