"""Full fine-tuning with layer-wise lr decay, built from timm's components (BEiT / MAE recipe).

timm pieces: `create_transform` (RandomResizedCrop, flip, RandAugment, random erasing),
`Mixup` (mixup + cutmix + label smoothing as soft targets), `create_optimizer_v2` (AdamW with
layer-decay param groups, no weight decay on 1-d params / pos_embed / cls_token),
`CosineLRScheduler` stepped per update (linear warmup, then cosine), `SoftTargetCrossEntropy`
and `LabelSmoothingCrossEntropy`.

Layer decay as timm's `param_groups_layer_decay` assigns it to a ViT (tested exactly): block i
(0-indexed) gets lr * decay^(depth - i), patch_embed / cls_token / pos_embed
lr * decay^(depth + 1), the head lr. timm puts the final `norm` with the last block
(decay^1); MAE's `lrd.py` gives it decay^0.
The test split is scored after every epoch for the curve (MAE's `main_finetune.py` does the same), but
the reported top-1 is the last epoch's, never the best one: no choice is made on test images.
A run shorter than its preset scales the warm-up down with it (5 of 100 epochs -> 0.5 of 10).
The fine-tuned model can be written as a timm `save_for_hf` folder (head included).
"""
import copy
import math
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import timm.data
import timm.loss
import timm.optim
import timm.scheduler
import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from hybrid_distill.evaluation.augment import patch_posterize
from hybrid_distill.evaluation.features import (Transformed, _device, _rank_world, _with_rgb, embed_dataset,
                                                eval_transform, input_size)
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
    layer_decay: float = 0.65
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


PRESETS = {
    "imagenet": FinetuneConfig(),
    # paper appendix C: CIFAR100, Cars, iNaturalist19 use batch 768 and lr 7.5e-6, the rest as ImageNet
    "small": FinetuneConfig(batch_size=768, lr=7.5e-6, ref_batch=768),
    # a short run for the demo: ~0.3M-parameter ViT at 28x28 on 2 CPU cores in about a minute. lr 1e-2 was
    # picked on held-out training images (scripts/pick_finetune_lr.py: the demo's Hybrid student and random
    # init fine-tuned on the first 10,000 training images, scored on the last 10,000; mean top-1 of the two
    # 50.5 / 58.6 / 62.5 / 60.7 at lr 1e-3 / 3e-3 / 1e-2 / 3e-2); the demo compares both at this one lr;
    # weaker augmentation (no RandAugment / mixup / cutmix, mild crops) suits 28x28 grayscale and few steps
    "fashion_mnist": FinetuneConfig(epochs=4, batch_size=128, lr=1e-2, ref_batch=256, warmup_epochs=0.5,
                                    layer_decay=0.75, drop_path=0.0, mixup=0.0, cutmix=0.0,
                                    auto_augment=None, re_prob=0.0, scale=(0.6, 1.0), crop_pct=1.0,
                                    train_subset=15000, num_workers=0),
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
    tf = timm.data.create_transform((3, *input_size(model)), is_training=True, scale=cfg.scale, hflip=cfg.hflip,
                                    color_jitter=None, auto_augment=cfg.auto_augment, interpolation="bicubic",
                                    re_prob=cfg.re_prob, re_mode="pixel", re_count=1, mean=mean, std=std)
    return _with_rgb(patch_posterize(tf))


def set_drop_path(model: nn.Module, rate: float) -> nn.Module:
    """Stochastic depth rising linearly from 0 at block 0 to `rate` at the last block (timm's rule)."""
    rates = torch.linspace(0, rate, len(model.blocks)).tolist()
    for block, r in zip(model.blocks, rates):
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()
    return model


def prepare_model(model: nn.Module, num_classes: int, drop_path: float) -> nn.Module:
    """A copy of the backbone with a fresh classifier (MAE: trunc-normal std 2e-5) and drop path."""
    model = copy.deepcopy(model)
    model.reset_classifier(num_classes)
    trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    return set_drop_path(model, drop_path)


def make_optimizer(model: nn.Module, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    return timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay,
                                          layer_decay=cfg.layer_decay)


def make_scheduler(opt, cfg: FinetuneConfig, steps_per_epoch: int):
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    return timm.scheduler.CosineLRScheduler(opt, t_initial=max(1, total - warmup), lr_min=cfg.min_lr,
                                            warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True,
                                            t_in_epochs=False)


def make_mixup(cfg: FinetuneConfig, num_classes: int):
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                           num_classes=num_classes)


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
    ds = Transformed(dataset, train_transform(model, cfg), indices)
    _, world = _rank_world()
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=cfg.seed) if world > 1 else None
    if len(ds) < cfg.batch_size * world:
        raise ValueError(f"{len(ds)} training images are fewer than one batch ({cfg.batch_size} x {world} ranks); "
                         "lower batch_size")
    gen = torch.Generator().manual_seed(cfg.seed)
    # drop_last: timm's Mixup needs an even batch, and equal batches keep the lr schedule exact
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                       num_workers=cfg.num_workers, drop_last=True, generator=gen,
                                       persistent_workers=cfg.num_workers > 0)


def train(model: nn.Module, loader, cfg: FinetuneConfig, num_classes: int, device: torch.device, log=None,
          validate=None) -> dict:
    """The fine-tuning loop; returns the last epoch's mean training loss, the step count and per-epoch
    records (with `validate(model) -> dict` scored after each epoch)."""
    _, world = _rank_world()
    lr = cfg.lr * cfg.batch_size * world / cfg.ref_batch
    opt = make_optimizer(model, cfg, lr)
    sched = make_scheduler(opt, cfg, len(loader))
    mixup = make_mixup(cfg, num_classes)
    criterion = make_criterion(cfg, mixup)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    step, epoch_loss, epochs = 0, float("nan"), []
    sched.step_update(0)
    for epoch in range(cfg.epochs):
        if world > 1:
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
            step += 1
            sched.step_update(step)
            total += loss.item()
        epoch_loss = total / len(loader)
        record = {"epoch": epoch + 1, "train_loss": epoch_loss, "lr": opt.param_groups[-1]["lr"],
                  **(validate(model) if validate else {})}
        epochs.append(record)
        if log:
            log(f"finetune epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                                        if k != "epoch"))
    return {"train_loss": epoch_loss, "steps": step, "lr": lr, "epochs": epochs}


def test_accuracy(model: nn.Module, test_ds, cfg: FinetuneConfig, device) -> dict:
    """Top-1 / top-5 (percent) on the test split; the model is left in train mode as it came."""
    model.eval()
    logits, labels = embed_dataset(model, Transformed(test_ds, eval_transform(model, cfg.crop_pct)),
                                   batch_size=2 * cfg.batch_size, device=device)
    model.train()
    return accuracy(logits, labels)


def finetune(model: nn.Module, train_ds, test_ds, cfg: FinetuneConfig, num_classes: int | None = None,
             device=None, log=None, save_to=None) -> dict:
    """Fine-tune a copy of model on train_ds, scoring test_ds after each epoch; report the last epoch
    (top-1 / top-5, percent). With save_to, rank 0 writes the fine-tuned model there (timm folder)."""
    device = _device(device)
    num_classes = num_classes or num_classes_of(train_ds)
    # timm's crops and Mixup draw from Python's and NumPy's global generators (MAE seeds them the same way)
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    model = prepare_model(model, num_classes, cfg.drop_path).to(device)
    validate = lambda m: {f"test_{k}": v for k, v in test_accuracy(m, test_ds, cfg, device).items()}
    start = time.perf_counter()
    stats = train(model, train_loader(train_ds, model, cfg), cfg, num_classes, device, log, validate)
    train_s = time.perf_counter() - start
    last = stats["epochs"][-1]
    result = {"top1": last["test_top1"], "top5": last["test_top5"], **stats, "train_seconds": train_s,
              "num_classes": num_classes, "config": asdict(cfg)}
    if save_to is not None and _rank_world()[0] == 0:
        result["weights"] = str(save_finetuned(model, save_to))
    return result


def save_finetuned(model: nn.Module, folder) -> str:
    """The fine-tuned model with its head as timm's `save_for_hf` folder:
    `timm.create_model('local-dir:FOLDER', pretrained=True)` loads it."""
    from timm.models import save_for_hf
    save_for_hf(set_drop_path(copy.deepcopy(model).cpu(), 0.0), str(folder), safe_serialization=True)
    return str(folder)


def finetune_eval(model: nn.Module, train_ds, test_ds, preset: str = "fashion_mnist", device=None,
                  log=None, save_to=None, **overrides) -> dict:
    """Fine-tune with a preset (overrides: any FinetuneConfig field) and report test top-1 / top-5."""
    result = finetune(model, train_ds, test_ds, make_config(preset, **overrides), device=device, log=log,
                      save_to=save_to)
    return {"protocol": "finetune", "preset": preset, **result, "provenance": provenance()}
