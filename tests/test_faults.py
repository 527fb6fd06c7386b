"""Fault injection in one process: signals, run-directory ownership, resume refusals and corrupt
checkpoints, unreadable data, non-finite steps and divergence. Tiny models; what needs a second process
(a signal to a process group, SIGKILL, torchrun) is in test_resilience.py."""

import json
import os
import signal
import subprocess

import pytest
import torch
from conftest import TINY, tiny_run_config, tiny_vit
from helpers import jpeg_folder, logged, write_yaml

from hybrid_distill import engine
from hybrid_distill import files as ckpt
from hybrid_distill import trainer as trainer_module
from hybrid_distill.cli import main
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.distributed import lost_peer
from hybrid_distill.files import save_model_file
from hybrid_distill.guards import EXIT_GUARD, EXIT_LOST_RANK, EXIT_PREEMPTED, Preemption, StopTraining, worker_killed
from hybrid_distill.resume import resolve
from hybrid_distill.run_dir import LOCK
from hybrid_distill.trainer import Trainer


def test_signal_before_the_first_step_exits_75_without_a_checkpoint(idx_folder, tmp_path):
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, tmp_path)))
    preemption = Preemption()
    preemption.requested = True  # as if SIGTERM came during start-up
    with pytest.raises(StopTraining, match="preempted by a signal before step 1: nothing new to save") as stop:
        trainer.fit(preemption)
    assert stop.value.exit_code == EXIT_PREEMPTED and not ckpt.list_checkpoints(trainer.run_dir)


def test_sigterm_finishes_the_step_saves_and_exits_75(idx_folder, tmp_path):
    values = tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 5})
    trainer = Trainer(from_dict(values))
    after = trainer.after_step
    trainer.after_step = lambda *a: (after(*a), trainer.step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(StopTraining, match=r"preempted by a signal after step 2") as stop:
        trainer.fit(Preemption())  # a real SIGTERM, caught by the handler fit installed
    assert stop.value.exit_code == EXIT_PREEMPTED == 75
    assert [p.name for p in ckpt.list_checkpoints(trainer.run_dir)] == ["checkpoint-00000002.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run
    assert Trainer(from_dict(values), resume="auto").step == 2


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


def test_a_collective_that_lost_its_peer_ends_the_rank_in_one_line_exit_4(idx_folder, tmp_path, monkeypatch, capsys):
    """In one process: a gloo group of one under WORLD_SIZE=2, and the error gloo raises on rank 0 when
    rank 1 is killed (test_resilience.py kills a real one)."""
    values = tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 5, "train.ckpt_every_steps": 2})
    config = write_yaml(tmp_path / "c.yaml", values)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:6049. This is ...")
    real, steps = trainer_module.train_step, []

    def step(*args):  # the third step's gradient all-reduce meets a closed connection
        steps.append(1)
        if len(steps) == 3:
            raise gone
        return real(*args)

    monkeypatch.setattr(trainer_module, "train_step", step)
    monkeypatch.setenv("WORLD_SIZE", "2")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        code = main(["train", str(config)])
    finally:
        torch.distributed.destroy_process_group()
    checkpoint = tmp_path / "tiny" / "checkpoints" / "checkpoint-00000002.pt"
    assert code == EXIT_LOST_RANK == 4
    assert capsys.readouterr().err.strip().splitlines() == [
        f"hybrid-distill train: rank 0: lost contact with the other processes (rank 1 died, hung or was killed?); the "
        f"last checkpoint is {checkpoint}; resume with --resume auto (exit code 4)"
    ]
    assert not lost_peer(gone)  # no process group: a message alone is not a lost peer


def test_fresh_run_into_a_used_directory_is_refused_and_changes_nothing(idx_folder, tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1}))
    assert main(["train", str(config)]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()}
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume auto" in err and "name=" in err
    assert main(["train", str(config), "--resume", "auto", "optim.batch_size=512"]) == 2  # refused for its input
    assert {p: p.read_bytes() for p in (tmp_path / "tiny").rglob("*") if p.is_file()} == before


def test_a_live_owner_refuses_a_second_run_and_a_stale_lock_is_taken_over(idx_folder, tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1}))
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
    config = write_yaml(tmp_path / "c.yaml", values)
    assert main(["train", str(config)]) == 0
    saved = ckpt.list_checkpoints(tmp_path / "tiny")[0]
    assert main(["train", str(config), "--resume", "auto", "student.model_kwargs.depth=4"]) == 2
    assert "student.model_kwargs" in capsys.readouterr().err
    saved.write_bytes(saved.read_bytes()[:-100])  # truncated
    for resume in ("auto", str(saved)):
        assert main(["train", str(config), "--resume", resume]) == 2  # not a silent start from step 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("checksum" in err or "complete" in err), err


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(idx_folder, tmp_path):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 2, "train.ckpt_every_steps": 1}))
    run_dir = Trainer(cfg).fit()
    first, newest = ckpt.list_checkpoints(run_dir)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        assert resolve("auto", run_dir) == first
    assert Trainer(cfg, resume="auto").step == 1


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
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 3})))
    before = {}
    after = trainer.after_step

    def snapshot_then_after(*args):
        before[trainer.step] = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        after(*args)

    trainer.after_step = snapshot_then_after
    trainer.fit()
    assert all(torch.equal(before[1][k], before[2][k]) for k in before[1])  # step 2 changed nothing
    assert not torch.equal(before[2]["backbone.cls_token"], before[3]["backbone.cls_token"])
    records = logged(trainer.run_dir)
    assert [r["skipped"] for r in records if "skipped" in r and "loss" in r] == [0.0, 1.0, 0.0]
    assert records[-1]["skipped_steps"] == 1


def folder_config(idx_folder, tmp_path, bad: int, **data):
    """The tiny run on a folder of 96 JPEGs, `bad` of them unreadable, stopping above 10% unreadable."""
    jpeg_folder(tmp_path / "images", 96, bad)
    values = tiny_run_config(idx_folder, tmp_path / "runs")
    values["data"] = {
        "dataset": "folder",
        "path": str(tmp_path / "images"),
        "img_size": 28,
        "num_workers": 0,
        "max_bad_fraction": 0.1,
        **data,
    }
    return from_dict(values)


def test_a_few_unreadable_images_are_skipped_and_reported(idx_folder, tmp_path):
    broken = jpeg_folder(tmp_path / "images", 96, 5)
    cfg = folder_config(idx_folder, tmp_path, 5, **{"num_workers": 2})  # workers report what they skipped
    cfg.train.epochs = 1
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.step == 6  # 96 images // 16
    reported = [line.split("\t")[1] for line in (trainer.run_dir / "bad_samples.txt").read_text().splitlines()]
    assert sorted(reported) == sorted(broken)  # every image read once in the epoch
    assert logged(trainer.run_dir)[-1]["bad_samples"] == 5 and logged(trainer.run_dir)[-1]["samples"] == 96


@pytest.mark.parametrize("bad", [48, 96])
def test_unreadable_data_stops_within_the_first_checks(idx_folder, tmp_path, bad):
    trainer = Trainer(folder_config(idx_folder, tmp_path, bad, bad_check_every=2))
    with pytest.raises(StopTraining, match=r"in epoch 0 were unreadable, above data.max_bad_fraction=0.1") as stop:
        trainer.fit()
    assert stop.value.exit_code == EXIT_GUARD and trainer.step == 2  # of 6 steps in the epoch


def test_the_bad_data_verdict_survives_a_preemption_and_a_resume(idx_folder, tmp_path):
    cfg = folder_config(idx_folder, tmp_path, 48, bad_check_every=4)
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
    with pytest.raises(StopTraining, match=r"2 non-finite steps in a row .*(loss part|gradient norm)") as stop:
        Trainer(diverging).fit()
    assert stop.value.exit_code == EXIT_GUARD and ckpt.list_checkpoints(tmp_path / "tiny")
    trainer = Trainer(
        from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 6})),
        resume="auto",
        allow_config_change=True,
    )
    assert all(v.abs().max() < 100 for v in trainer.student.state_dict().values() if v.is_floating_point())
    trainer.fit()
    assert logged(trainer.run_dir)[-1]["skipped_steps"] == 0 and trainer.step == 6


def test_teacher_weights_with_nan_are_refused_at_load(idx_folder, tmp_path):
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[2].mlp.fc1.weight[0, 0] = float("nan")
    path = save_model_file(model, "vit_tiny_patch16_224", dict(TINY), tmp_path / "nan.pt")
    values = tiny_run_config(idx_folder, tmp_path, **{"teachers.sup.weights": str(path)})
    with pytest.raises(ConfigError, match=r"teachers.sup.weights=.*blocks.2.mlp.fc1.weight.*NaN or inf"):
        Trainer(from_dict(values))
