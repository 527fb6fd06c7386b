"""W&B and MLflow, off by default, get exactly the records metrics.jsonl gets (fake modules, no service)."""

import sys
import types

import pytest
from conftest import tiny_run_config
from helpers import logged

from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.trainer import Trainer


def fake_wandb(calls):
    module = types.ModuleType("wandb")
    module.init = lambda **kw: calls.append(("init", kw)) or object()
    module.log = lambda record, step: calls.append(("log", step, dict(record)))
    module.finish = lambda: calls.append(("finish",))
    return module


def fake_mlflow(calls):
    module = types.ModuleType("mlflow")
    module.start_run = lambda run_name: calls.append(("start", run_name))
    module.log_params = lambda params: calls.append(("params", params))
    module.log_metrics = lambda metrics, step: calls.append(("log", step, dict(metrics)))
    module.end_run = lambda: calls.append(("end",))
    return module


def test_trackers_get_what_metrics_jsonl_gets(idx_folder, tmp_path, monkeypatch):
    wandb_calls, mlflow_calls = [], []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(wandb_calls))
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(mlflow_calls))
    cfg = from_dict(
        tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 3, "train.trackers": ["wandb", "mlflow"]})
    )
    trainer = Trainer(cfg)
    trainer.fit()
    written = logged(trainer.run_dir)
    numbers = [{k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))} for r in written]
    assert [(c[1], c[2]) for c in wandb_calls if c[0] == "log"] == [(r["step"], n) for r, n in zip(written, numbers)]
    assert [c[1] for c in mlflow_calls if c[0] == "log"] == [r["step"] for r in written]
    assert wandb_calls[0][1]["name"] == "tiny" and wandb_calls[-1] == ("finish",) and mlflow_calls[-1] == ("end",)
    assert dict(mlflow_calls[1][1])["optim.blr"] == str(cfg.optim.blr)


def test_trackers_are_off_by_default_and_a_missing_one_says_how_to_install(idx_folder, tmp_path, monkeypatch):
    assert from_dict(tiny_run_config(idx_folder, tmp_path)).train.trackers == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as when not installed
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1, "train.trackers": ["wandb"]}))
    with pytest.raises(ConfigError, match=r"pip install 'hybrid-distill\[wandb\]'"):
        Trainer(cfg).fit()
