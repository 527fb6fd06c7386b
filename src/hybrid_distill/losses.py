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


def distill_losses(out: StudentOutput, targets: Targets, weights: dict[str, float],
                   beta: float) -> dict[str, torch.Tensor]:
    """Named weighted parts '<teacher>/feat' and '<teacher>/rel<block index>' and their sum under 'loss'."""
    parts = {}
    for name, feats in targets.features.items():
        parts[f"{name}/feat"] = weights[name] * smooth_l1(out.features[name], feats, beta)
    for name, relations in targets.relations.items():
        # eq. 3 distils the concatenation [R^{L-1}, R^{L-2}] under one mean: each block weighs 1/n
        for block, rel in relations.items():
            share = weights[name] / len(relations)
            parts[f"{name}/rel{block}"] = share * smooth_l1(out.relations[name][block], rel, beta)
    parts["loss"] = torch.stack(list(parts.values())).sum()
    return parts
