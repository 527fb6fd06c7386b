"""Issue 6 on the CPU: preemption, corrupt checkpoints, crash + resume, bad data, non-finite steps,
and torchrun with 2 processes (gloo) against 1 process with the same global batch."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run_config
from PIL import Image

from hybrid_distill import engine, files
from hybrid_distill.config import from_dict
from hybrid_distill.guards import EXIT_GUARD, EXIT_PREEMPTED, StopTraining
from hybrid_distill.resume import resolve
from hybrid_distill.trainer import Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path, values, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hybrid_distill.cli", "train", str(config), *extra]


def wait_for_step(metrics: Path, step: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and any(
            json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines()
        ):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def final_params(run_dir: Path) -> dict:
    return torch.load(files.list_checkpoints(run_dir)[-1], weights_only=True)["model"]


def assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(idx_folder, tmp_path):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 2, "train.ckpt_every_steps": 1}))
    run_dir = Trainer(cfg).fit()
    first, newest = files.list_checkpoints(run_dir)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        assert resolve("auto", run_dir) == first
    resumed = Trainer(cfg, resume="auto")
    assert resumed.step == 1


def test_injected_nan_loss_is_skipped_and_counted(idx_folder, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = engine.distill_losses

    def nan_on_second_step(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(engine, "distill_losses", nan_on_second_step)
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 3}))
    trainer = Trainer(cfg)
    before = {}

    def snapshot(step):
        before[step] = {k: v.clone() for k, v in trainer.student.state_dict().items()}

    original_after = trainer.after_step
    trainer.after_step = lambda log, parts, lr, epoch: (snapshot(trainer.step), original_after(log, parts, lr, epoch))
    trainer.fit()
    assert_same(before[1], before[2], atol=0)  # step 2 changed nothing
    assert not torch.equal(before[2]["backbone.cls_token"], before[3]["backbone.cls_token"])
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records if "skipped" in r and "loss" in r] == [0.0, 1.0, 0.0]
    assert records[-1]["skipped_steps"] == 1


def test_nonfinite_steps_in_a_row_save_and_stop(idx_folder, tmp_path, monkeypatch):
    real = engine.distill_losses
    monkeypatch.setattr(
        engine, "distill_losses", lambda *a, **k: (lambda p: {**p, "loss": p["loss"] * float("inf")})(real(*a, **k))
    )
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_nonfinite_steps": 3}))
    trainer = Trainer(cfg)
    with pytest.raises(StopTraining, match="3 non-finite steps in a row") as stop:
        trainer.fit()
    assert stop.value.exit_code == EXIT_GUARD and files.list_checkpoints(trainer.run_dir)


def image_folder(root: Path, n: int, bad: int) -> list[str]:
    """n JPEGs in 2 classes; `bad` of them unreadable: half random bytes, half truncated JPEGs."""
    rng = np.random.default_rng(0)
    broken = []
    for i in range(n):
        path = root / "train" / f"class{i % 2}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        if i < bad:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3] if i % 2 else rng.bytes(300))
            broken.append(str(path))
    return broken


@pytest.mark.parametrize("bad", [5, 50])
def test_unreadable_images_are_skipped_and_reported_or_stop_the_run(idx_folder, tmp_path, bad):
    broken = image_folder(tmp_path / "images", 100, bad)
    values = tiny_run_config(idx_folder, tmp_path / "runs", **{"train.epochs": 1})
    values["data"] = {
        "dataset": "folder",
        "path": str(tmp_path / "images"),
        "img_size": 28,
        "num_workers": 2,
        "max_bad_fraction": 0.1,
    }
    trainer = Trainer(from_dict(values))
    if bad == 50:
        with pytest.raises(StopTraining, match=r"in epoch 0 were unreadable, above data.max_bad_fraction=0.1"):
            trainer.fit()
        return
    trainer.fit()
    assert trainer.step == 6  # 100 images // 16
    reported = [line.split("\t")[1] for line in (trainer.run_dir / "bad_samples.txt").read_text().splitlines()]
    seen = 6 * 16
    assert set(reported) <= set(broken) and len(reported) >= bad * seen // 100 - 2
    last = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["bad_samples"] == len(reported) and last["samples"] == seen


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, code, said",
    [(signal.SIGTERM, EXIT_PREEMPTED, "preempted by a signal"), (signal.SIGINT, 130, "interrupted (Ctrl-C)")],
)
def test_sigterm_or_ctrl_c_saves_and_exits_with_the_documented_code_then_resumes(idx_folder, tmp_path, sig, code, said):
    values = tiny_run_config(idx_folder, tmp_path, **{"train.epochs": 50})
    config = write_config(tmp_path, values)
    proc = subprocess.Popen(train_cmd(config), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "tiny" / "metrics.jsonl", 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert said in err and "Traceback" not in err
    saved = files.list_checkpoints(tmp_path / "tiny")[-1]
    assert files.is_complete(saved)
    step = torch.load(saved, weights_only=True)["step"]
    assert Trainer(from_dict(values), resume="auto").step == step


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(idx_folder, tmp_path):
    steps = 10
    extra = {"train.max_steps": steps, "train.ckpt_every_steps": 1, "train.epochs": 4}
    straight = write_config(tmp_path, tiny_run_config(idx_folder, tmp_path / "a", **extra), "a.yaml")
    subprocess.run(train_cmd(straight), env=ENV, check=True, capture_output=True)
    killed = write_config(tmp_path, tiny_run_config(idx_folder, tmp_path / "b", **extra), "b.yaml")
    proc = subprocess.Popen(train_cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(tmp_path / "b" / "tiny" / "metrics.jsonl", random.Random().randint(2, steps - 2), proc)
    proc.kill()
    proc.wait()
    subprocess.run(train_cmd(killed, "--resume", "auto"), env=ENV, check=True, capture_output=True)
    assert_same(final_params(tmp_path / "a" / "tiny"), final_params(tmp_path / "b" / "tiny"))


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["ddp", "fsdp", "ddp+compile"])
def test_torchrun_two_processes_equal_one_process(idx_folder, tmp_path, wrap):
    extra = {"train.max_steps": 4, "student.drop_path": 0.0, "train.device": "cpu"}  # gloo, also on a GPU host
    one = write_config(tmp_path, tiny_run_config(idx_folder, tmp_path / "one", **extra), "one.yaml")
    subprocess.run(train_cmd(one), env=ENV, check=True, capture_output=True)
    options = {"train.fsdp": wrap == "fsdp", "train.compile": wrap == "ddp+compile"}
    two = write_config(tmp_path, tiny_run_config(idx_folder, tmp_path / "two", **extra, **options), "two.yaml")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "hybrid_distill.cli",
        "train",
        str(two),
    ]
    result = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same(final_params(tmp_path / "one" / "tiny"), final_params(tmp_path / "two" / "tiny"))
    # the sharded run's checkpoint is a plain one: a single process resumes from it
    values = tiny_run_config(idx_folder, tmp_path / "two", **{**extra, "train.max_steps": 5})
    assert Trainer(from_dict(values), resume="auto").step == 4
