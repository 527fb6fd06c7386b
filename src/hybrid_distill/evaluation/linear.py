"""Linear probe on frozen features, many (lr, weight decay) settings trained at once.

As in DINOv2's `eval/linear.py`: one nn.Linear per setting, all fed the same batch, each in its
own optimizer param group (SGD, momentum 0.9, lr scaled by batch/256, per-step cosine), so the
whole grid costs one pass over the data per epoch. Features are standardised with the mean/std
of the fitting part (MAE's linear probe puts a BatchNorm without affine before its head for the
same reason: the probe's lr must not depend on the backbone's feature scale).

No test leakage: the setting is chosen on a seeded held-out part of the *training* split; the
chosen setting is refit on the whole training split; only then is the test split read, once.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import product

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_distill.evaluation.features import extract_features
from hybrid_distill.provenance import provenance

LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)


@dataclass(frozen=True)
class ProbeConfig:
    lrs: tuple[float, ...] = LEARNING_RATES  # at batch 256, scaled linearly (DINOv2)
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    epochs: int = 10
    batch_size: int = 256
    holdout: float = 0.1  # fraction of the training split used to choose the setting
    refit: bool = True  # retrain the chosen setting on the whole training split
    seed: int = 0

    def settings(self) -> list[tuple[float, float]]:
        return list(product(self.lrs, self.weight_decays))


@dataclass
class Probe:
    """A trained linear classifier with the standardisation it was trained under."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    head: nn.Linear

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head((feats.float() - self.mean) / self.std)  # (N, C)


def standardiser(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-6)


def train_heads(
    feats: torch.Tensor, labels: torch.Tensor, settings: list[tuple[float, float]], num_classes: int, cfg: ProbeConfig
) -> list[Probe]:
    """One Linear per (lr, wd) setting, all trained on the same shuffled batches."""
    mean, std = standardiser(feats)
    x_all = (feats.float() - mean) / std  # (N, D)
    gen = torch.Generator().manual_seed(cfg.seed)
    heads = nn.ModuleList(nn.Linear(feats.shape[1], num_classes) for _ in settings)
    for head in heads:  # DINOv2 LinearClassifier init
        nn.init.normal_(head.weight, std=0.01, generator=gen)
        nn.init.zeros_(head.bias)
    scale = cfg.batch_size / 256
    opt = torch.optim.SGD(
        [{"params": h.parameters(), "lr": lr * scale, "weight_decay": wd} for h, (lr, wd) in zip(heads, settings)],
        momentum=0.9,
    )
    steps_per_epoch = math.ceil(len(x_all) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for idx in order.split(cfg.batch_size):
            x, y = x_all[idx], labels[idx]  # (B, D), (B,)
            logits = torch.stack([h(x) for h in heads])  # (S, B, C)
            # sum over settings of each head's mean loss: every head gets exactly its own gradient
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(heads)), reduction="sum") / len(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return [Probe(mean, std, h.requires_grad_(False)) for h in heads]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 accuracy in percent of (N, C) logits."""
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
    target = labels.view(-1, 1)
    return {
        "top1": 100.0 * (ranked[:, :1] == target).float().mean().item(),
        "top5": 100.0 * (ranked == target).any(dim=1).float().mean().item(),
    }


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (fit indices, held-out indices) of a training split of n samples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {fraction}")
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"a training split of {n} samples is too small to hold out {fraction:.0%} of it")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def select_setting(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig) -> dict:
    """Train every setting on the fit part, score each on the held-out part of the training split."""
    fit, val = holdout_split(len(feats), cfg.holdout, cfg.seed)
    settings = cfg.settings()
    probes = train_heads(feats[fit], labels[fit], settings, num_classes, cfg)
    scores = [accuracy(p(feats[val]), labels[val])["top1"] for p in probes]
    best = max(range(len(settings)), key=lambda i: scores[i])  # first of equals: deterministic
    return {
        "lr": settings[best][0],
        "weight_decay": settings[best][1],
        "probe": probes[best],
        "holdout_top1": scores[best],
        "grid": [{"lr": lr, "weight_decay": wd, "holdout_top1": s} for (lr, wd), s in zip(settings, scores)],
    }


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    load_test: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    num_classes: int | None = None,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """Choose a setting on held-out training data, refit, then call load_test() once and evaluate."""
    num_classes = num_classes or int(train_labels.max()) + 1
    chosen = select_setting(train_feats, train_labels, num_classes, cfg)
    probe = chosen.pop("probe")
    if cfg.refit:
        probe = train_heads(train_feats, train_labels, [(chosen["lr"], chosen["weight_decay"])], num_classes, cfg)[0]
    test_feats, test_labels = load_test()
    return {**accuracy(probe(test_feats), test_labels), "chosen": chosen}


def linear_eval(
    model,
    train_ds,
    test_ds,
    pool: str = "cls",
    cfg: ProbeConfig = ProbeConfig(),
    batch_size: int = 256,
    device=None,
    crop_pct: float = 1.0,
    cache_dir=None,
    data_keys: tuple[str, str] | None = None,
) -> dict:
    """Linear probe top-1 / top-5 (percent) of a frozen model; test_ds is read only after selection."""
    kw = dict(pool=pool, batch_size=batch_size, device=device, crop_pct=crop_pct, cache_dir=cache_dir)
    keys = data_keys or (None, None)
    train_feats, train_labels = extract_features(model, train_ds, data_key=keys[0], **kw)
    result = linear_probe(
        train_feats, train_labels, lambda: extract_features(model, test_ds, data_key=keys[1], **kw), cfg=cfg
    )
    return {
        "protocol": "linear",
        **result,
        "provenance": provenance(),
        "config": {
            **asdict(cfg),
            "pool": pool,
            "crop_pct": crop_pct,
            "train_size": len(train_feats),
            "dim": train_feats.shape[1],
        },
    }
