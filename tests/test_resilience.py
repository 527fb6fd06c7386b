"""What needs a second process: a signal to the command's process group with loader workers, Ctrl-C to the
command, SIGKILL then resume, and torchrun with 2 processes (gloo) against 1 process with the same global
batch. Each trains in subprocesses, so all are slow; their in-process counterparts (a real SIGTERM and
SIGINT to the test process, exact resume) are in test_faults.py and test_train.py."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from helpers import SUBPROCESS_ENV, train_cmd, write_yaml

from hybrid_distill import files
from hybrid_distill.cli import main
from hybrid_distill.config import from_dict
from hybrid_distill.guards import EXIT_INTERRUPTED, EXIT_LOST_RANK, EXIT_PREEMPTED
from hybrid_distill.run_dir import LOCK
from hybrid_distill.trainer import Trainer


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


@pytest.mark.slow  # default suite: test_faults.py's test_sigterm_finishes_the_step_saves_and_exits_75
def test_sigterm_to_the_process_group_with_two_workers_saves_exits_75_and_resumes_exactly(idx_folder, tmp_path, capsys):
    extra = {"train.max_steps": 40, "train.epochs": 7, "data.num_workers": 2, "data.persistent_workers": True}
    straight = write_yaml(tmp_path / "a.yaml", tiny_run_config(idx_folder, tmp_path / "a", **extra))
    killed = write_yaml(tmp_path / "b.yaml", tiny_run_config(idx_folder, tmp_path / "b", **extra))
    proc = subprocess.Popen(
        train_cmd(killed),
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # setsid: its own process group, as under SLURM
    reference = subprocess.Popen(
        train_cmd(straight), env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_step(tmp_path / "b" / "tiny" / "metrics.jsonl", 2, proc, timeout=300)
    # a second run into the same directory while the first holds it: refused in one line
    assert main(["train", str(killed), "--resume", "auto"]) == 2
    assert "is in use by pid" in capsys.readouterr().err
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does: every process of the job, workers included
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    stopped = torch.load(files.list_checkpoints(tmp_path / "b" / "tiny")[-1], weights_only=True)["step"]
    assert 2 <= stopped < 40 and not (tmp_path / "b" / "tiny" / LOCK).exists()
    resumed = subprocess.run(train_cmd(killed, "--resume", "auto"), env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=300) == 0
    a, b = final_params(tmp_path / "a" / "tiny"), final_params(tmp_path / "b" / "tiny")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


@pytest.mark.slow  # default suite: test_faults.py's test_ctrl_c_finishes_the_step_...
def test_ctrl_c_to_the_command_saves_and_exits_130_without_a_traceback_then_resumes(idx_folder, tmp_path):
    values = tiny_run_config(idx_folder, tmp_path, **{"train.epochs": 50})
    config = write_yaml(tmp_path / "c.yaml", values)
    proc = subprocess.Popen(
        train_cmd(config), env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(tmp_path / "tiny" / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    saved = files.list_checkpoints(tmp_path / "tiny")[-1]
    assert files.is_complete(saved)
    step = torch.load(saved, weights_only=True)["step"]
    assert Trainer(from_dict(values), resume="auto").step == step


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(idx_folder, tmp_path):
    steps = 10
    extra = {"train.max_steps": steps, "train.ckpt_every_steps": 1, "train.epochs": 4}
    straight = write_yaml(tmp_path / "a.yaml", tiny_run_config(idx_folder, tmp_path / "a", **extra))
    subprocess.run(train_cmd(straight), env=SUBPROCESS_ENV, check=True, capture_output=True)
    killed = write_yaml(tmp_path / "b.yaml", tiny_run_config(idx_folder, tmp_path / "b", **extra))
    proc = subprocess.Popen(train_cmd(killed), env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(tmp_path / "b" / "tiny" / "metrics.jsonl", random.Random().randint(2, steps - 2), proc)
    proc.kill()
    proc.wait()
    subprocess.run(train_cmd(killed, "--resume", "auto"), env=SUBPROCESS_ENV, check=True, capture_output=True)
    assert_same(final_params(tmp_path / "a" / "tiny"), final_params(tmp_path / "b" / "tiny"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # default suite: test_faults.py's test_a_collective_that_lost_its_peer_ends_the_rank_...
def test_a_rank_killed_mid_run_ends_the_other_in_one_line_and_the_run_resumes(idx_folder, tmp_path):
    extra = {"train.max_steps": 200, "train.epochs": 50, "train.ckpt_every_steps": 2, "train.device": "cpu"}
    config = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path, **extra))
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # as torchrun sets
    ranks = [
        subprocess.Popen(
            train_cmd(config),
            env={**SUBPROCESS_ENV, **world, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    wait_for_step(tmp_path / "tiny" / "metrics.jsonl", 3, ranks[0])
    ranks[1].kill()  # SIGKILL: no handler runs, its sockets close
    _, err = ranks[0].communicate(timeout=120)
    ranks[1].wait()
    saved = files.list_checkpoints(tmp_path / "tiny")[-1]
    assert ranks[0].returncode == EXIT_LOST_RANK, err
    assert err.strip().splitlines() == [
        f"hybrid-distill train: rank 0: lost contact with the other processes (rank 1 died, hung or was killed?); the "
        f"last checkpoint is {saved}; resume with --resume auto (exit code {EXIT_LOST_RANK})"
    ]
    step = torch.load(saved, weights_only=True)["step"]
    resumed = train_cmd(config, "--resume", "auto", f"train.max_steps={step + 1}")
    assert subprocess.run(resumed, env=SUBPROCESS_ENV, capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["ddp", "fsdp", "ddp+compile"])
def test_torchrun_two_processes_equal_one_process(idx_folder, tmp_path, wrap):
    extra = {"train.max_steps": 4, "student.drop_path": 0.0, "train.device": "cpu"}  # gloo, also on a GPU host
    one = write_yaml(tmp_path / "one.yaml", tiny_run_config(idx_folder, tmp_path / "one", **extra))
    subprocess.run(train_cmd(one), env=SUBPROCESS_ENV, check=True, capture_output=True)
    options = {"train.fsdp": wrap == "fsdp", "train.compile": wrap == "ddp+compile"}
    two = write_yaml(tmp_path / "two.yaml", tiny_run_config(idx_folder, tmp_path / "two", **extra, **options))
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
    result = subprocess.run(torchrun, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same(final_params(tmp_path / "one" / "tiny"), final_params(tmp_path / "two" / "tiny"))
    # the sharded run's checkpoint is a plain one: a single process resumes from it
    values = tiny_run_config(idx_folder, tmp_path / "two", **{**extra, "train.max_steps": 5})
    assert Trainer(from_dict(values), resume="auto").step == 4
