"""Optional experiment trackers (Weights & Biases, MLflow), off by default (`train.trackers=[wandb]`).

Each is fed the very records written to metrics.jsonl (numbers only), at the same steps, so the
three never disagree. The packages are extras (`pip install 'hybrid-distill[wandb]'`), imported only
when asked for; a missing one stops the run before its first step with the install line.
"""

import importlib

from .config import to_dict
from .config_schema import ConfigError

KNOWN = ("wandb", "mlflow")


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker:
    def __init__(self, module, cfg):
        self.wandb = module
        self.run = module.init(project="hybrid-distill", name=cfg.name, config=to_dict(cfg), resume="allow")

    def log(self, step: int, record: dict) -> None:
        self.wandb.log(_numbers(record), step=step)

    def close(self) -> None:
        self.wandb.finish()


class MlflowTracker:
    def __init__(self, module, cfg):
        self.mlflow = module
        module.start_run(run_name=cfg.name)
        module.log_params({k: str(v) for k, v in _flat(to_dict(cfg)).items()})

    def log(self, step: int, record: dict) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in _numbers(record).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def open_trackers(cfg) -> list:
    """The trackers `cfg.train.trackers` names, started; [] by default."""
    trackers = []
    for name in cfg.train.trackers:
        if name not in KNOWN:
            raise ConfigError(f"train.trackers: unknown tracker '{name}'; choose from {list(KNOWN)}")
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"train.trackers=[{name}] needs {name}: pip install 'hybrid-distill[{name}]'") from None
        trackers.append((WandbTracker if name == "wandb" else MlflowTracker)(module, cfg))
    return trackers
