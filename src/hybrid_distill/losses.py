"""Distillation losses (paper eq. 1): smooth-L1 on CLS + kept tokens, one named part per target.

Smooth L1 with beta 2.0, mean over channels (or relation entries) and tokens, as dBOT and FD.
"""

import torch
import torch.nn.functional as F

from .models.student import StudentOutput
from .targets import Targets


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.smooth_l1_loss(pred.float(), target.float(), beta=beta)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Mask reconstruction (paper 2.4): smooth-L1 averaged over channels, then over the tokens where
    mask (B, N) is True only (dBOT models_mae.py `forward_loss`; SimMIM's masked mean)."""
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} do not match"
        )
    per_token = F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="none").mean(dim=-1)
    weight = mask.float()
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)


def distill_losses(
    out: StudentOutput, targets: Targets, weights: dict[str, float], beta: float
) -> dict[str, torch.Tensor]:
    """Named weighted parts '<teacher>/feat' (or '<teacher>/mask_feat' with mask reconstruction) and
    '<teacher>/rel<block index>', and their sum under 'loss'."""
    parts = {}
    for name, feats in targets.features.items():
        if out.loss_mask is not None:
            parts[f"{name}/mask_feat"] = weights[name] * masked_smooth_l1(
                out.features[name], feats, out.loss_mask, beta
            )
        else:
            parts[f"{name}/feat"] = weights[name] * smooth_l1(out.features[name], feats, beta)
    for name, relations in targets.relations.items():
        # eq. 3 distils the concatenation [R^{L-1}, R^{L-2}] under one mean: each block weighs 1/n
        for block, rel in relations.items():
            share = weights[name] / len(relations)
            parts[f"{name}/rel{block}"] = share * smooth_l1(out.relations[name][block], rel, beta)
    parts["loss"] = torch.stack(list(parts.values())).sum()
    return parts
