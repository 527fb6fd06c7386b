"""Fault injection: process-group preemption with loader workers, run-directory ownership, resume
refusals, unreadable data and divergence. Tiny models; subprocesses only where a real signal or a
second process is the point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, tiny_run_config, tiny_vit
from PIL import Image

from hybrid_distill import files as ckpt
from hybrid_distill.cli import main
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.files import save_model_file
from hybrid_distill.guards import EXIT_GUARD, EXIT_PREEMPTED, Preemption, StopTraining, worker_killed
from hybrid_distill.run_dir import LOCK
from hybrid_distill.trainer import Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hybrid_distill.cli", "train", str(config), *extra]


def reached(metrics: Path, step: int) -> bool:
    return metrics.is_file() and any(
        json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines()
    )


def newest_student(run_dir: Path) -> dict:
    return torch.load(ckpt.list_checkpoints(run_dir)[-1], weights_only=True)["model"]


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_sigterm_to_the_process_group_with_two_workers_saves_exits_75_and_resumes_exactly(idx_folder, tmp_path, capsys):
    extra = {"train.max_steps": 40, "train.epochs": 7, "data.num_workers": 2, "data.persistent_workers": True}
    straight = write_config(tmp_path / "a.yaml", tiny_run_config(idx_folder, tmp_path / "a", **extra))
    killed = write_config(tmp_path / "b.yaml", tiny_run_config(idx_folder, tmp_path / "b", **extra))
    proc = subprocess.Popen(
        train_cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # setsid: its own process group, as under SLURM
    reference = subprocess.Popen(train_cmd(straight), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not reached(tmp_path / "b" / "tiny" / "metrics.jsonl", 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    # a second run into the same directory while the first holds it: refused in one line
    assert main(["train", str(killed), "--resume", "auto"]) == 2
    assert "is in use by pid" in capsys.readouterr().err
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does: every process of the job, workers included
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    stopped = torch.load(ckpt.list_checkpoints(tmp_path / "b" / "tiny")[-1], weights_only=True)["step"]
    assert 2 <= stopped < 40 and not (tmp_path / "b" / "tiny" / LOCK).exists()
    resumed = subprocess.run(train_cmd(killed, "--resume", "auto"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=300) == 0
    a, b = newest_student(tmp_path / "a" / "tiny"), newest_student(tmp_path / "b" / "tiny")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_signal_before_the_first_step_exits_75_without_a_checkpoint(idx_folder, tmp_path):
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, tmp_path)))
    preemption = Preemption()
    preemption.requested = True  # as if SIGTERM came during start-up
    with pytest.raises(StopTraining, match="preempted by a signal before step 1: nothing new to save") as stop:
        trainer.fit(preemption)
    assert stop.value.exit_code == EXIT_PREEMPTED and not ckpt.list_checkpoints(trainer.run_dir)


def test_ctrl_c_finishes_the_step_saves_and_exits_130_a_second_aborts(idx_folder, tmp_path, capsys):
    from hybrid_distill.guards import EXIT_INTERRUPTED

    values = tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 5})
    trainer = Trainer(from_dict(values))
    preemption = Preemption()
    after = trainer.after_step
    trainer.after_step = lambda *a: (after(*a), trainer.step == 2 and os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(StopTraining, match=r"interrupted \(Ctrl-C\) after step 2: checkpoint saved") as stop:
        trainer.fit(preemption)  # a real SIGINT, caught by the handler fit installed
    assert stop.value.exit_code == EXIT_INTERRUPTED == 130 and "Ctrl-C again to abort" in capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(trainer.run_dir)] == ["checkpoint-00000002.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the run
    resumed = Trainer(from_dict(values), resume="auto")
    assert resumed.step == 2
    second = Preemption()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert second.interrupted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C: at once
    finally:
        second.restore()


def test_signal_at_the_last_step_finishes_with_exit_0(idx_folder, tmp_path):
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 2})))
    preemption = Preemption()
    after = trainer.after_step
    trainer.after_step = lambda *a: (after(*a), setattr(preemption, "requested", trainer.step == 2))
    trainer.fit(preemption)  # no StopTraining
    assert [p.name for p in ckpt.list_checkpoints(trainer.run_dir)] == ["checkpoint-00000002.pt"]


def test_a_loader_worker_killed_by_a_signal_counts_as_preemption():
    class Worker:
        def __init__(self, exitcode):
            self.exitcode = exitcode

    class Batches:  # torch's multi-process iterator keeps its worker processes in _workers
        _workers = [Worker(None), Worker(-signal.SIGKILL)]

    assert worker_killed(ConnectionResetError(104, "Connection reset by peer"), Batches())
    Batches._workers = [Worker(None), Worker(None)]
    assert not worker_killed(ConnectionResetError(104, "Connection reset by peer"), Batches())
    assert worker_killed(RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated."), None)


def test_fresh_run_into_a_used_directory_is_refused_and_changes_nothing(idx_folder, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1}))
    assert main(["train", str(config)]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()}
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume auto" in err and "name=" in err
    assert main(["train", str(config), "--resume", "auto", "optim.batch_size=512"]) == 2  # refused for its input
    assert {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()} == before


def test_a_live_owner_refuses_a_second_run_and_a_stale_lock_is_taken_over(idx_folder, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1}))
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    owner = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": owner.pid}))
        assert main(["train", str(config)]) == 2
        assert f"in use by pid {owner.pid}" in capsys.readouterr().err
    finally:
        owner.kill()
        owner.wait()
    assert main(["train", str(config)]) == 0  # the owner is gone: its lock is stale
    assert not (run_dir / LOCK).exists() and ckpt.list_checkpoints(run_dir)


def test_resume_refuses_corrupt_files_and_another_architecture_in_one_line(idx_folder, tmp_path, capsys):
    values = tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1})
    config = write_config(tmp_path / "c.yaml", values)
    assert main(["train", str(config)]) == 0
    saved = ckpt.list_checkpoints(tmp_path / "tiny")[0]
    assert main(["train", str(config), "--resume", "auto", "student.model_kwargs.depth=4"]) == 2
    assert "student.model_kwargs" in capsys.readouterr().err
    saved.write_bytes(saved.read_bytes()[:-100])  # truncated
    for resume in ("auto", str(saved)):
        assert main(["train", str(config), "--resume", resume]) == 2  # not a silent start from step 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("checksum" in err or "complete" in err), err


def image_folder(root: Path, n: int, bad: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / "train" / f"class{i % 2}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        if i % 2 and i < 2 * bad or bad == n:
            path.write_bytes(rng.bytes(300))


def folder_config(idx_folder, tmp_path, bad: int, **extra):
    image_folder(tmp_path / "images", 96, bad)
    values = tiny_run_config(idx_folder, tmp_path / "runs", **extra)
    values["data"] = {
        "dataset": "folder",
        "path": str(tmp_path / "images"),
        "img_size": 28,
        "num_workers": 0,
        "max_bad_fraction": 0.1,
        "bad_check_every": 2,
    }
    return from_dict(values)


@pytest.mark.parametrize("bad", [48, 96])
def test_unreadable_data_stops_within_the_first_checks(idx_folder, tmp_path, bad):
    trainer = Trainer(folder_config(idx_folder, tmp_path, bad))
    with pytest.raises(StopTraining, match="unreadable, above data.max_bad_fraction") as stop:
        trainer.fit()
    assert stop.value.exit_code == EXIT_GUARD and trainer.step == 2  # of 6 steps in the epoch


def test_the_bad_data_verdict_survives_a_preemption_and_a_resume(idx_folder, tmp_path):
    cfg = folder_config(idx_folder, tmp_path, 48)
    cfg.data.bad_check_every = 4
    trainer, preemption = Trainer(cfg), Preemption()
    after = trainer.after_step
    trainer.after_step = lambda *a: (after(*a), setattr(preemption, "requested", trainer.step == 2))
    with pytest.raises(StopTraining, match="preempted"):
        trainer.fit(preemption)
    with pytest.raises(StopTraining, match="unreadable") as stop:
        Trainer(cfg, resume="auto").fit()  # counts from before the preemption count at step 4
    assert stop.value.exit_code == EXIT_GUARD
    listed = (trainer.run_dir / "bad_samples.txt").read_text().splitlines()
    with pytest.raises(StopTraining, match="unreadable"):
        Trainer(cfg, resume="auto").fit()  # the verdict stands: exit 3 again, not 0
    assert (trainer.run_dir / "bad_samples.txt").read_text().splitlines() == listed
    state = torch.load(ckpt.list_checkpoints(trainer.run_dir)[-1], weights_only=True)
    assert state["step"] == 4 and len(listed) == len(state["bad_samples"][0]["bad"]) > 16


def test_divergence_saves_a_state_from_before_it_and_a_sane_lr_trains_on(idx_folder, tmp_path):
    diverging = from_dict(tiny_run_config(idx_folder, tmp_path, **{"optim.blr": 1e10, "train.max_nonfinite_steps": 2}))
    with pytest.raises(StopTraining, match=r"non-finite .*(loss part|gradient norm)") as stop:
        Trainer(diverging).fit()
    assert stop.value.exit_code == EXIT_GUARD
    trainer = Trainer(
        from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 6})),
        resume="auto",
        allow_config_change=True,
    )
    assert all(v.abs().max() < 100 for v in trainer.student.state_dict().values() if v.is_floating_point())
    trainer.fit()
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_steps"] == 0 and trainer.step == 6


def test_teacher_weights_with_nan_are_refused_at_load(idx_folder, tmp_path):
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[2].mlp.fc1.weight[0, 0] = float("nan")
    path = save_model_file(model, "vit_tiny_patch16_224", dict(TINY), tmp_path / "nan.pt")
    values = tiny_run_config(idx_folder, tmp_path, **{"teachers.sup.weights": str(path)})
    with pytest.raises(ConfigError, match=r"teachers.sup.weights=.*blocks.2.mlp.fc1.weight.*NaN or inf"):
        Trainer(from_dict(values))
