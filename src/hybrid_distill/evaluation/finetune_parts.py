"""Pieces of the fine-tuning recipes that timm does not give as MAE and dBOT use them.

- `mae_param_groups`: MAE `util/lr_decay.py` (`param_groups_lrd`, `get_layer_id_for_vit`): cls_token,
  pos_embed and patch_embed are layer 0, block i is layer i + 1, everything after the blocks (final
  norm, fc_norm, head) is layer L + 1 at the full lr; scale = decay^(L + 1 - layer). timm's own
  grouping puts the final norm with the last block (decay^1). No weight decay on 1-d parameters and
  the model's `no_weight_decay()` names (MAE `main_finetune.py`).
- `use_global_average_pool`: MAE `models_vit.py` / dBOT `main_finetune.py` `--global_pool`: the mean
  of the patch tokens through a fresh `fc_norm`; the final norm is removed.
- `repeated_sampler`: dBOT `evaluation/eval_cls.py` `RASampler` (3 repeats, epoch length rounded
  down to a multiple of 256), as timm's RepeatAugSampler.
"""

from timm.data.distributed_sampler import RepeatAugSampler
from torch import nn


def layer_id(name: str, depth: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def mae_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW groups with an `lr_scale` each (timm's schedulers multiply it in); layer_decay None: all 1."""
    depth, skip = len(model.blocks), set(model.no_weight_decay())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in skip)
        layer = layer_id(name, depth) if layer_decay is not None else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault(
            (layer, decay), {"params": [], "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0}
        )
        group["params"].append(p)
    return list(groups.values())


def use_global_average_pool(model: nn.Module) -> nn.Module:
    """timm ViT -> the mean of its patch tokens, then a fresh fc_norm of the final norm's kind."""
    width, norm = model.embed_dim, model.norm
    model.global_pool = "avg"
    model.fc_norm = type(norm)(width, eps=norm.eps) if isinstance(norm, nn.LayerNorm) else nn.LayerNorm(width, eps=1e-6)
    model.norm = nn.Identity()
    return model


def repeated_sampler(dataset, repeats: int, rank: int, world: int, batch_size: int):
    """dBOT's repeated augmentation; the 256-rounding only where the epoch holds at least 256 x world
    images (a smaller set would round to nothing)."""
    round_to = 256 if len(dataset) >= 256 * world else 0
    if len(dataset) * repeats // world < batch_size:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch ({batch_size} x {world} ranks)")
    return RepeatAugSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, num_repeats=repeats, selected_round=round_to
    )


def ema_model(model: nn.Module, decay: float | None):
    """timm's ModelEmaV3 of the model being fine-tuned (dBOT `eval_cls.py` `--model-ema`), or None."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def reset_head(model: nn.Module, num_classes: int, global_pool: str) -> nn.Module:
    """A fresh classifier (MAE: trunc-normal std 2e-5, zero bias) on the pooled tokens."""
    from timm.layers import trunc_normal_

    model.reset_classifier(num_classes)
    if global_pool == "avg":
        use_global_average_pool(model)
    trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    return model


def checked_pool(name: str) -> str:
    if name not in ("avg", "token"):
        raise ValueError(f"global_pool must be 'avg' (patch-token mean + fc_norm) or 'token' (CLS), got '{name}'")
    return name
