"""Full fine-tuning with layer-wise lr decay, built from timm's components (BEiT / MAE recipe).

timm pieces: `create_transform` (RandomResizedCrop, flip, RandAugment, random erasing),
`Mixup` (mixup + cutmix + label smoothing as soft targets), `RepeatAugSampler`, `ModelEmaV3`,
`CosineLRScheduler` stepped per update (linear warmup, then cosine), `SoftTargetCrossEntropy`
and `LabelSmoothingCrossEntropy`.

Layer decay as MAE's `util/lr_decay.py` assigns it (finetune_parts.py, tested exactly): block i
(0-indexed) gets lr * decay^(depth - i), patch_embed / cls_token / pos_embed lr * decay^(depth + 1),
the final norm, fc_norm and head the full lr. Pooling (`global_pool`): 'avg', the mean of the patch
tokens + fc_norm (MAE / dBOT `main_finetune.py`), or 'token', the CLS token (dBOT `eval_cls.py`).
The test split is scored after every `eval_every` epochs and after the last (the result); scoring draws
nothing from the training's random streams, so `eval_every` changes the cost, never the training.
"""

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import timm.data
import timm.loss
import timm.scheduler
import torch
from timm.layers import DropPath
from torch import nn

from hybrid_distill.data.errors import DataError
from hybrid_distill.data.unreadable import Checked, drop_unreadable, readable_indices
from hybrid_distill.evaluation.augment import patch_posterize
from hybrid_distill.evaluation.features import (
    Transformed,
    _device,
    _rank_world,
    _with_rgb,
    embed_dataset,
    eval_transform,
    input_size,
)
from hybrid_distill.evaluation.finetune_parts import (
    checked_pool,
    ema_model,
    mae_param_groups,
    repeated_sampler,
    reset_head,
)
from hybrid_distill.evaluation.linear import accuracy
from hybrid_distill.models.load import mean_std
from hybrid_distill.provenance import provenance


@dataclass(frozen=True)
class FinetuneConfig:
    """Defaults: the paper's ImageNet-1K fine-tune (appendix C: lr 3e-4 at batch 256, following dBOT);
    what the paper leaves out follows MAE's `main_finetune.py` (warmup 5, min lr 1e-6, reprob 0.25)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-4  # at batch ref_batch; the lr used is lr * batch_size * world / ref_batch
    ref_batch: int = 256
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    warmup_lr: float = 0.0  # where the linear warm-up starts
    layer_decay: float | None = 0.65  # None: one lr for every layer
    global_pool: str = "avg"  # 'avg': patch-token mean + fc_norm (MAE, dBOT main_finetune.py); 'token': CLS
    ema_decay: float | None = None  # evaluate an EMA of the weights too (dBOT eval_cls.py --model-ema)
    repeated_aug: int = 1  # repeats of each image per epoch (dBOT eval_cls.py RASampler: 3)
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    crop_pct: float = 0.875  # evaluation resize / centre crop
    train_subset: int | None = None  # a seeded random subset of the train split, for short runs
    seed: int = 0
    num_workers: int = 4
    eval_every: int = 1  # score the test split after every N epochs and after the last; 0: after the last only

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"fine-tune epochs must be a whole number >= 1, got {self.epochs!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(
                f"eval_every must be a whole number >= 0 (0: score the test split after the last "
                f"epoch only), got {self.eval_every!r}"
            )


# paper appendix C: CIFAR100, Cars, iNaturalist19 at batch 768 and lr 7.5e-6, following dBOT, whose run.sh
# (cifar_cls, cars_cls, inat19_cls) runs evaluation/eval_cls.py with 96 images per GPU on 8 GPUs, lr 7.5e-6
# scaled by batch / 512, 1000 epochs (iNat19: 360 and random erasing 0.1), the CLS token
# (--avgpool_patchtokens 0); eval_cls.py's defaults: EMA 0.99996, repeated augmentation, no layer decay,
# warm-up 5 epochs from 1e-6, min lr 1e-5, drop path 0.1, mixup 0.8 / cutmix 1.0, smoothing 0.1,
# RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, weight decay 0.05
DBOT_SMALL_SETS = FinetuneConfig(
    epochs=1000,
    batch_size=96,
    lr=7.5e-6,
    ref_batch=512,
    min_lr=1e-5,
    warmup_epochs=5.0,
    warmup_lr=1e-6,
    layer_decay=None,
    global_pool="token",
    ema_decay=0.99996,
    repeated_aug=3,
)

PRESETS = {
    "imagenet": FinetuneConfig(),
    "cifar100": DBOT_SMALL_SETS,
    "cars": DBOT_SMALL_SETS,
    "inat19": replace(DBOT_SMALL_SETS, epochs=360, re_prob=0.1),
    # a short run for the demo: ~0.3M-parameter ViT at 28x28 on 2 CPU cores in about a minute. lr 1e-2 was
    # picked on held-out training images (docs/replication/pick_finetune_lr/: the demo's Hybrid student and random
    # init fine-tuned on the first 10,000 training images, scored on the last 10,000; mean top-1 of the two
    # 50.5 / 58.6 / 62.5 / 60.7 at lr 1e-3 / 3e-3 / 1e-2 / 3e-2); the demo compares both at this one lr;
    # weaker augmentation (no RandAugment / mixup / cutmix, mild crops) suits 28x28 grayscale and few steps
    "fashion_mnist": FinetuneConfig(
        epochs=4,
        batch_size=128,
        lr=1e-2,
        ref_batch=256,
        warmup_epochs=0.5,
        layer_decay=0.75,
        global_pool="token",
        drop_path=0.0,
        mixup=0.0,
        cutmix=0.0,
        auto_augment=None,
        re_prob=0.0,
        scale=(0.6, 1.0),
        crop_pct=1.0,
        train_subset=15000,
        num_workers=0,
    ),
}


def make_config(name: str, **overrides) -> FinetuneConfig:
    """A preset with some fields replaced (any FinetuneConfig field); fewer epochs than the preset's
    scale its warm-up by the same factor unless warmup_epochs is given too."""
    if name not in PRESETS:
        raise ValueError(f"unknown fine-tune preset '{name}'; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    epochs = overrides.get("epochs", preset.epochs)
    if "warmup_epochs" not in overrides and epochs < preset.epochs:
        overrides["warmup_epochs"] = preset.warmup_epochs * epochs / preset.epochs
    return replace(preset, **overrides)


def train_transform(model: nn.Module, cfg: FinetuneConfig):
    mean, std = mean_std(model)
    tf = timm.data.create_transform(
        (3, *input_size(model)),
        is_training=True,
        scale=cfg.scale,
        hflip=cfg.hflip,
        color_jitter=None,
        auto_augment=cfg.auto_augment,
        interpolation="bicubic",
        re_prob=cfg.re_prob,
        re_mode="pixel",
        re_count=1,
        mean=mean,
        std=std,
    )
    return _with_rgb(patch_posterize(tf))


def set_drop_path(model: nn.Module, rate: float) -> nn.Module:
    """Stochastic depth rising linearly from 0 at block 0 to `rate` at the last block (timm's rule)."""
    rates = torch.linspace(0, rate, len(model.blocks)).tolist()
    for block, r in zip(model.blocks, rates):
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()
    return model


def prepare_model(model: nn.Module, num_classes: int, drop_path: float, global_pool: str = "token") -> nn.Module:
    """A copy of the backbone with a fresh classifier (MAE: trunc-normal std 2e-5) on the pooled tokens
    and drop path."""
    model = reset_head(copy.deepcopy(model), num_classes, checked_pool(global_pool))
    return set_drop_path(model, drop_path)


def make_optimizer(model: nn.Module, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(mae_param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=lr)


def make_scheduler(opt, cfg: FinetuneConfig, steps_per_epoch: int):
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    return timm.scheduler.CosineLRScheduler(
        opt,
        t_initial=max(1, total - warmup),
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def make_mixup(cfg: FinetuneConfig, num_classes: int):
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return timm.data.Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )


def make_criterion(cfg: FinetuneConfig, mixup) -> nn.Module:
    """MAE's choice: soft targets under mixup (smoothing is inside them), else smoothed CE, else CE."""
    if mixup is not None:
        return timm.loss.SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return timm.loss.LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


def num_classes_of(dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
    if labels is None:
        labels = [label for _, label in dataset]
    return int(torch.as_tensor(labels).max()) + 1


def train_loader(dataset, model, cfg: FinetuneConfig):
    indices = None
    if cfg.train_subset is not None and cfg.train_subset < len(dataset):
        gen = torch.Generator().manual_seed(cfg.seed)
        indices = torch.randperm(len(dataset), generator=gen)[: cfg.train_subset].tolist()
    if isinstance(dataset, Checked):  # read every epoch: the unreadable ones are found once, before the first
        indices = readable_indices(dataset, indices, cfg.num_workers)
    ds = Transformed(dataset, train_transform(model, cfg), indices)
    rank, world = _rank_world()
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=cfg.seed) if world > 1 else None
    repeats = cfg.repeated_aug if cfg.repeated_aug > 1 else 1
    if len(ds) * repeats // world < cfg.batch_size:
        raise DataError(
            f"{len(ds)} training images are fewer than one batch ({cfg.batch_size} x {world} ranks, "
            f"{repeats} repeats): lower --batch-size or add images"
        )
    if cfg.repeated_aug > 1:
        sampler = repeated_sampler(ds, cfg.repeated_aug, rank, world, cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    # drop_last: timm's Mixup needs an even batch, and equal batches keep the lr schedule exact
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        generator=gen,
        persistent_workers=cfg.num_workers > 0,
    )


def train(
    model: nn.Module, loader, cfg: FinetuneConfig, num_classes: int, device: torch.device, log=None, validate=None
) -> dict:
    """The fine-tuning loop; returns the last epoch's mean training loss, the step count and per-epoch
    records (with `validate(model) -> dict` scored after the epochs `scored` names)."""
    _, world = _rank_world()
    lr = cfg.lr * cfg.batch_size * world / cfg.ref_batch
    opt = make_optimizer(model, cfg, lr)
    sched = make_scheduler(opt, cfg, len(loader))
    mixup = make_mixup(cfg, num_classes)
    criterion = make_criterion(cfg, mixup)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    ema = ema_model(model, cfg.ema_decay)
    step, epoch_loss, epochs = 0, float("nan"), []
    sched.step_update(0)
    for epoch in range(cfg.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        net.train()
        total = 0.0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mixup is not None:
                images, labels = mixup(images, labels)  # labels -> (B, C) soft targets
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(net(images), labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"fine-tune loss is {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            sched.step_update(step)
            total += loss.item()
        epoch_loss = total / len(loader)
        record = {
            "epoch": epoch + 1,
            "train_loss": epoch_loss,
            "lr": opt.param_groups[-1]["lr"],
            **(untouched_rng(validate, model) if validate and scored(epoch + 1, cfg) else {}),
        }
        epochs.append(record)
        if log:
            log(
                f"finetune epoch {epoch + 1}/{cfg.epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
            )
    return {"train_loss": epoch_loss, "steps": step, "lr": lr, "epochs": epochs, "ema": ema}


def untouched_rng(fn, *args):
    """fn(*args) with torch's CPU generator restored afterwards: a DataLoader draws its base seed from it, and
    the training's flips and drop-path draw from it too, so scoring must not move it."""
    with torch.random.fork_rng(devices=[]):
        return fn(*args)


def scored(epoch: int, cfg: FinetuneConfig) -> bool:
    """Is the test split scored after this (1-based) epoch? Always after the last: its score is the result."""
    return epoch == cfg.epochs or (cfg.eval_every > 0 and epoch % cfg.eval_every == 0)


def test_accuracy(model: nn.Module, test_ds, cfg: FinetuneConfig, device) -> dict:
    """Top-1 / top-5 (percent) on the test split; the model is left in train mode as it came."""
    model.eval()
    logits, labels = embed_dataset(
        model, Transformed(test_ds, eval_transform(model, cfg.crop_pct)), batch_size=2 * cfg.batch_size, device=device
    )
    model.train()
    return accuracy(*drop_unreadable(test_ds, logits, labels))


def finetune(
    model: nn.Module,
    train_ds,
    test_ds,
    cfg: FinetuneConfig,
    num_classes: int | None = None,
    device=None,
    log=None,
    save_to=None,
) -> dict:
    """Fine-tune a copy of model on train_ds, scoring test_ds after each epoch (`eval_every`); report the last epoch
    (top-1 / top-5, percent). With save_to, rank 0 writes the fine-tuned model there (timm folder)."""
    device = _device(device)
    num_classes = num_classes or num_classes_of(train_ds)
    # timm's crops and Mixup draw from Python's and NumPy's global generators (MAE seeds them the same way)
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    model = prepare_model(model, num_classes, cfg.drop_path, cfg.global_pool).to(device)

    def validate(m):
        return {f"test_{k}": v for k, v in test_accuracy(m, test_ds, cfg, device).items()}

    start = time.perf_counter()
    stats = train(model, train_loader(train_ds, model, cfg), cfg, num_classes, device, log, validate)
    train_s = time.perf_counter() - start
    last, ema = stats["epochs"][-1], stats.pop("ema")
    result = {
        "top1": last["test_top1"],
        "top5": last["test_top5"],
        **stats,
        "train_seconds": train_s,
        "num_classes": num_classes,
        "config": asdict(cfg),
    }
    if ema is not None:  # dBOT eval_cls.py evaluates the EMA weights as well
        result.update({f"ema_{k}": v for k, v in test_accuracy(ema.module, test_ds, cfg, device).items()})
    if save_to is not None and _rank_world()[0] == 0:
        result["weights"] = str(save_finetuned(model, save_to))
    return result


def save_finetuned(model: nn.Module, folder) -> str:
    """The fine-tuned model with its head as timm's `save_for_hf` folder:
    `timm.create_model('local-dir:FOLDER', pretrained=True)` loads it."""
    from timm.models import save_for_hf

    save_for_hf(set_drop_path(copy.deepcopy(model).cpu(), 0.0), str(folder), safe_serialization=True)
    return str(folder)


def finetune_eval(
    model: nn.Module, train_ds, test_ds, preset: str = "fashion_mnist", device=None, log=None, save_to=None, **overrides
) -> dict:
    """Fine-tune with a preset (overrides: any FinetuneConfig field) and report test top-1 / top-5."""
    result = finetune(
        model, train_ds, test_ds, make_config(preset, **overrides), device=device, log=log, save_to=save_to
    )
    return {"protocol": "finetune", "preset": preset, **result, "provenance": provenance()}
