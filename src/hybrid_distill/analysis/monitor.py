"""Attention distance and NMI of a ViT on a fixed probe batch, for logging during training."""

import torch
from torch import nn

from hybrid_distill.analysis.extract import METRICS, reduce_attention, unwrap
from hybrid_distill.analysis.metrics import attention_distance, attention_nmi


class AttentionMonitor:
    """Call with the student every N steps; log the returned {name: float}.

    probe_images: (B, 3, H, W), already normalised the way the model expects. Keys are
    `attn/{distance,distance_plain,nmi}/layerXX` (0-indexed blocks); values are means over the
    probe images and heads. The model is run in eval mode and its mode is restored.
    """

    def __init__(self, probe_images: torch.Tensor, grid_size, patch_size):
        if probe_images.dim() != 4:
            raise ValueError(f"probe_images must be (B, 3, H, W), got shape {tuple(probe_images.shape)}")
        self.probe_images = probe_images.detach().cpu()
        self.grid_size = grid_size
        self.patch_size = patch_size

    def layer_metrics(self, model: nn.Module) -> torch.Tensor:
        """(3, layers) in METRICS order: mean over probe images and heads."""
        prefix = int(unwrap(model).num_prefix_tokens)

        def reduce(_, probs):
            per_head = torch.stack(
                [
                    attention_distance(probs, self.grid_size, self.patch_size, prefix, renormalize=True),
                    attention_distance(probs, self.grid_size, self.patch_size, prefix, renormalize=False),
                    attention_nmi(probs, prefix),
                ]
            )  # (3, B, H)
            return per_head.mean(dim=(1, 2)).cpu()

        return torch.stack(reduce_attention(model, self.probe_images, reduce), dim=1)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        values = self.layer_metrics(model)
        return {f"attn/{name}/layer{i:02d}": float(v) for name, row in zip(METRICS, values) for i, v in enumerate(row)}
