"""Distillation losses (paper eq. 1): smooth-L1 on CLS + kept tokens, one named part per target.

Smooth L1 with beta 2.0, mean over channels (or relation entries) and tokens, as dBOT and FD.
"""

from collections import Counter

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
    """One weighted part per target, named by it ('<teacher>/feat', or '<teacher>/mask_feat' with mask
    reconstruction, and '<teacher>/rel<block index>'), features first, and their sum under 'loss'."""
    parts = {}
    listed = sorted(targets.values, key=lambda t: not t.is_features)
    blocks = Counter(t.teacher for t in listed if not t.is_features)
    for t in listed:
        pred, target = out.values[t], targets.values[t]
        if t.is_features and out.loss_mask is not None:
            parts[f"{t.teacher}/mask_feat"] = weights[t.teacher] * masked_smooth_l1(pred, target, out.loss_mask, beta)
        elif t.is_features:
            parts[t.part] = weights[t.teacher] * smooth_l1(pred, target, beta)
        else:
            # eq. 3 distils the concatenation [R^{L-1}, R^{L-2}] under one mean: each block weighs 1/n
            parts[t.part] = weights[t.teacher] / blocks[t.teacher] * smooth_l1(pred, target, beta)
    parts["loss"] = torch.stack(list(parts.values())).sum()
    return parts
