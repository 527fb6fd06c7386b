"""What a run says before it starts: summary, --print-config, --dry-run, --version, config `base:`."""

import runpy
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config
from helpers import write_yaml

from hybrid_distill import __version__
from hybrid_distill.cli import main
from hybrid_distill.config import load_config
from hybrid_distill.run_log import RunLog


def test_dry_run_prints_the_summary_and_writes_nothing(idx_folder, tmp_path, capsys):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path / "runs"))
    assert main(["train", str(path), "--dry-run", "optim.blr=3e-4"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    for part in (
        "run directory: ",
        "backbone parameters",
        "96 images",
        "6 steps per epoch x 2 epochs = 12 steps",
        "lr: 1.87e-05 peak",
        "teacher sup: vit_tiny_patch16_224 from random init",
        "teacher mim:",
        "dry run: nothing trained",
    ):
        assert part in out, part


def test_print_config_and_version(idx_folder, tmp_path, capsys):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path))
    assert main(["train", str(path), "--print-config", "optim.blr=3e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["blr"] == 3e-4 and printed["train"]["epochs"] == 2
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"hybrid-distill {__version__}"


def test_python_dash_m_runs_the_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hybrid_distill", "--version"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("hybrid_distill", run_name="__main__")  # what `python -m hybrid_distill` runs
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"hybrid-distill {__version__}"


def test_a_config_builds_on_a_shipped_one_with_base(tmp_path):
    shipped = Path("configs/hybrid_vitb_mae_clip.yaml").resolve()  # itself a diff over configs/base/
    (tmp_path / "variant.yaml").write_text(f"base: {shipped}\nname: variant\nteachers:\n  mim:\n    weight: 0.5\n")
    variant, original = load_config(tmp_path / "variant.yaml"), load_config(shipped)
    assert variant.name == "variant" and variant.teachers.mim.weight == 0.5
    assert original.teachers.mim.weight != 0.5  # the override is the variant's, not the base's
    assert variant.teachers.mim.arch == original.teachers.mim.arch  # the rest comes from the base chain
    assert variant.teachers.keys() == original.teachers.keys() and variant.optim == original.optim


def test_base_loop_fails_in_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    import pytest

    from hybrid_distill.config import ConfigError

    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")


def test_progress_bar_ends_at_its_total(tmp_path):
    log = RunLog(tmp_path, total_steps=92, start_step=0, progress=True, tensorboard=False)
    log.show(80, {"loss": 1.0})
    log.log(92, {"epoch": 0})  # the end-of-run record; the last shown step was 80 (log_every apart)
    log.close()
    assert log.bar.n == 92


def test_a_warm_up_of_half_the_run_is_warned_with_the_lr_it_reaches(idx_folder, tmp_path, capsys):
    from conftest import tiny_run_config

    from hybrid_distill.config import from_dict
    from hybrid_distill.trainer import Trainer

    Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"optim.warmup_epochs": 1, "train.epochs": 2})))
    out = capsys.readouterr().out
    # 96 images / 16 = 6 steps an epoch: warm-up 6 of 12 steps, lr 1.5e-4 * 16 / 256 * 6 / 6 at its end
    assert "warning: the warm-up (6 steps) is half the run (12 steps) or more: the lr reaches at most 9.37e-06" in out
    Trainer(from_dict(tiny_run_config(idx_folder, tmp_path / "b", **{"optim.warmup_epochs": 1, "train.epochs": 3})))
    assert "warning: the warm-up" not in capsys.readouterr().out


def test_a_resume_past_where_the_config_stops_is_refused(idx_folder, tmp_path):
    from conftest import tiny_run_config

    from hybrid_distill.config import ConfigError, from_dict
    from hybrid_distill.trainer import Trainer, train

    train(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 3})))
    with pytest.raises(ConfigError, match="checkpoint is at step 3, past step 2 where this config stops"):
        Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 2})), resume="auto")
    assert Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 3})), resume="auto").step == 3
