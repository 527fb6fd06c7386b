"""Resume and restart: overrides after flags, extending a run, a changed config, --init-from,
and metrics that neither repeat steps nor depend on the world size."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_run_config
from helpers import logged, write_yaml

from hybrid_distill import cli
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.distributed import mean_over_ranks
from hybrid_distill.trainer import Trainer

# 96 images / batch 16: 6 steps an epoch, 12 in the tiny run's 2 epochs


def tiny(idx_folder, out, resume=None, allow=False, **extra):
    trainer = Trainer(from_dict(tiny_run_config(idx_folder, out, **extra)), resume=resume, allow_config_change=allow)
    trainer.fit()
    return trainer


def test_overrides_after_the_flags_are_accepted(idx_folder, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("hybrid_distill.trainer.train", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or tmp_path)
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path))
    assert (
        cli.main(["train", str(path), "--resume", "auto", "train.epochs=3", "--allow-config-change", "optim.blr=1e-4"])
        == 0
    )
    assert seen["cfg"].train.epochs == 3 and seen["cfg"].optim.blr == 1e-4
    assert seen["resume"] == "auto" and seen["allow_config_change"] is True


def test_extending_a_finished_run_says_what_the_lr_does(idx_folder, tmp_path, capsys):
    tiny(idx_folder, tmp_path)
    longer = tiny(idx_folder, tmp_path, resume="auto", **{"train.epochs": 3})
    out = capsys.readouterr().out
    assert longer.step == 18 and "train.epochs 2 -> 3: the cosine lr schedule is recomputed over 3 epochs" in out
    old, new = out.split("at step 12 the lr goes from ")[1].split()[0:3:2]
    assert float(old) == pytest.approx(0.0, abs=1e-12) and float(new) > 1e-6  # the end of the old cosine -> mid-way


def test_resume_with_another_config_shows_it_and_needs_the_flag(idx_folder, tmp_path, capsys):
    tiny(idx_folder, tmp_path, **{"train.max_steps": 4})
    with pytest.raises(ConfigError, match=r"optim\.blr: 0\.00015 -> 0\.0003[\s\S]*--allow-config-change"):
        tiny(idx_folder, tmp_path, resume="auto", **{"train.max_steps": 8, "optim.blr": 3e-4})
    resumed = tiny(
        idx_folder,
        tmp_path,
        resume="auto",
        allow=True,
        **{"train.max_steps": 8, "optim.blr": 3e-4, "train.log_every": 4},
    )
    assert resumed.step == 8 and "optim.blr: 0.00015 -> 0.0003" in capsys.readouterr().out


def test_init_from_starts_a_new_run_from_another_runs_student(idx_folder, tmp_path):
    source = tiny(idx_folder, tmp_path / "a", **{"train.max_steps": 4})
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path / "b", **{"train.max_steps": 1}))
    fresh = Trainer(cfg, init_from=str(source.run_dir))
    assert fresh.step == 0 and not fresh.optimizer.state_dict()["state"]
    for (name, a), b in zip(source.student.state_dict().items(), fresh.student.state_dict().values()):
        assert torch.equal(a, b), name  # backbone and heads: the same teachers
    with pytest.raises(ConfigError, match="one of them"):
        Trainer(cfg, resume="auto", init_from=str(source.run_dir))


def test_resume_from_an_older_checkpoint_does_not_repeat_steps(idx_folder, tmp_path):
    run = tiny(idx_folder, tmp_path, **{"train.keep_checkpoints": 5})  # checkpoints at steps 6 and 12
    (run.run_dir / "checkpoints" / "checkpoint-00000012.pt").unlink()
    resumed = tiny(idx_folder, tmp_path, resume="auto")
    steps = [r["step"] for r in logged(resumed.run_dir) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # 7..12 written once, by the resumed run
    assert all(isinstance(r["time"], float) for r in logged(resumed.run_dir))


def test_progress_off_prints_a_line_every_log_every_steps(idx_folder, tmp_path, capsys):
    tiny(idx_folder, tmp_path, **{"train.log_every": 4, "train.progress": False})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/12", "4/12", "8/12", "12/12"]
    assert "loss=" in lines[-1] and "lr=" in lines[-1]


def _mean_worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    queue.put((rank, mean_over_ranks({"loss": 1.0 + 2 * rank, "skipped": float(rank)})))
    dist.destroy_process_group()


def test_logged_values_are_the_mean_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("fork").Queue()  # fork: the ranks need no fresh interpreter importing torch
    mp.start_processes(_mean_worker, args=(port, queue), nprocs=2, start_method="fork")
    results = dict(queue.get() for _ in range(2))
    assert results[0] == results[1] == {"loss": 2.0, "skipped": 0.5}
    assert mean_over_ranks({"loss": 3.0}) == {"loss": 3.0}  # one process: unchanged


def test_keys_added_since_the_checkpoint_and_execution_settings_are_no_change():
    from hybrid_distill.config import from_dict, to_dict
    from hybrid_distill.resume_policy import check_resume_config

    new = to_dict(from_dict({"train": {"compile": True}}))
    old = to_dict(from_dict({}))
    del old["train"]["trackers"]  # written before that key existed
    assert check_resume_config(old, new, allow=False) == []
    with pytest.raises(ConfigError, match="loss.beta"):
        check_resume_config(old, {**new, "loss": {"beta": 1.0}}, allow=False)
