"""The demo's own small teachers, trained on Fashion-MNIST: a supervised ViT (labels, the stand-in
for DeiT / CLIP) and an MAE-pre-trained ViT (pixels, the MIM teacher). Saved as our model files so
the distillation runs load them like any teacher file."""

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data.build import build_loader
from ..data.transforms import to_unit
from ..engine import lr_at, param_groups, set_lr
from ..files import save_atomic, save_model_file
from ..models.decoder import sincos_2d
from ..models.load import create_vit
from ..models.tokens import Normalize
from .mae import MaskedAutoencoder


def fit(
    module: nn.Module,
    loss_fn,
    data_cfg,
    dataset,
    epochs: int,
    batch: int,
    blr: float,
    seed: int,
    desc: str,
    mean,
    std,
    state: Path | None = None,
    after_epoch=None,
) -> None:
    """AdamW (0.9, 0.95), wd 0.05, one warmup epoch then cosine, per step (MAE recipe).

    With `state`, the module, optimiser and generator are saved there after every epoch and a run
    stopped part-way resumes from the last finished epoch; `after_epoch(epoch)` (1-based) runs after
    each, in eval mode, under its own generator state (it cannot move the training's draws).
    """
    loader, sampler = build_loader(data_cfg, dataset, batch, batch, seed)
    optimizer = torch.optim.AdamW(param_groups(module, 0.05), lr=0.0, betas=(0.9, 0.95))
    normalize, steps = Normalize(mean, std), sampler.steps_per_epoch
    start = resume_fit(state, module, optimizer)
    peak = blr * batch / 256
    bar = tqdm(total=epochs * steps, initial=start * steps, desc=desc, dynamic_ncols=True)
    for epoch in range(start, epochs):
        module.train()
        sampler.set_epoch(epoch)
        for images, labels, _ in loader:
            set_lr(optimizer, lr_at(bar.n, epochs * steps, steps, peak, 0.0))
            loss = loss_fn(normalize(to_unit(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
        module.eval()
        if after_epoch is not None:  # before the state: a run killed in between redoes the epoch and its hook
            with torch.random.fork_rng(devices=[]):
                after_epoch(epoch + 1)
        if state is not None:
            save_atomic(
                state,
                {
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "rng": torch.get_rng_state(),
                },
            )
    bar.close()
    module.eval()


def resume_fit(state: Path | None, module: nn.Module, optimizer) -> int:
    """The epochs already done by an interrupted `fit` (0 without a state file), its weights loaded."""
    if state is None or not Path(state).is_file():
        return 0
    saved = torch.load(state, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["module"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return int(saved["epoch"])


def train_supervised_teacher(demo, data_cfg, dataset, path: Path) -> Path:
    model = create_vit(demo.arch, num_classes=10, **demo.vit_kwargs)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    fit(
        model,
        lambda x, y: ce(model(x), y),
        data_cfg,
        dataset,
        demo.teacher_epochs,
        demo.batch,
        demo.supervised_blr,
        demo.seed,
        "supervised teacher",
        demo.mean,
        demo.std,
    )
    model.reset_classifier(0)
    return save_model_file(model, demo.arch, demo.vit_kwargs, path, demo.mean, demo.std)


def fix_sincos_positions(encoder: nn.Module) -> nn.Module:
    """MAE's encoder positions (models_mae.py): fixed 2-D sin-cos, a zero CLS row, not trained."""
    grid = tuple(encoder.patch_embed.grid_size)
    encoder.pos_embed.data.copy_(sincos_2d(encoder.embed_dim, grid))
    encoder.pos_embed.requires_grad_(False)
    return encoder


def train_mae_teacher(demo, data_cfg, dataset, path: Path, state: Path | None = None, after_epoch=None) -> Path:
    """MAE pre-training of a fresh encoder (resumable through `state`); `after_epoch(encoder)` builds the
    per-epoch hook (e.g. study.curve.recorder) once the encoder exists."""
    encoder = create_vit(demo.arch, **demo.vit_kwargs)
    if getattr(demo, "pos_embed", "learned") == "sincos":
        fix_sincos_positions(encoder)
    mae = MaskedAutoencoder(
        encoder, decoder_depth=getattr(demo, "decoder_depth", 2), mask_ratio=getattr(demo, "mask_ratio", 0.75)
    )
    hook = after_epoch(encoder) if after_epoch is not None else None
    fit(
        mae,
        lambda x, _: mae(x),
        data_cfg,
        dataset,
        demo.mae_epochs,
        demo.batch,
        demo.mae_blr,
        demo.seed,
        "MAE teacher",
        demo.mean,
        demo.std,
        state=state,
        after_epoch=hook,
    )
    encoder.pos_embed.requires_grad_(True)  # a file's weights are all parameters; as a teacher it is frozen
    return save_model_file(encoder, demo.arch, demo.vit_kwargs, path, demo.mean, demo.std)
