"""Post-softmax attention of every block of a timm ViT, reduced block by block.

The maps of one block for one batch are (B, H, N, N): 119 MB for 64 ViT-B/16 images at 224, and
twelve blocks of them would not fit beside a thousand images. So every block's maps go straight
to a reduction (to per-image (B, H) metrics, or to a few query rows) and are dropped. The model
runs its own modules in eval mode, without autocast, through the explicit attention of
`hybrid_distill.models.attention` (timm's fused path never returns maps); nothing on it is
changed, and its train/eval mode is restored afterwards.
"""

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from hybrid_distill.analysis.metrics import attention_distance, attention_nmi
from hybrid_distill.masking import all_indices
from hybrid_distill.models.attention import attention_probs, check_block
from hybrid_distill.models.tokens import embed_with_rope, rope_at

METRICS = ("distance", "distance_plain", "nmi")


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def check_vit(model: nn.Module) -> None:
    for name in ("patch_embed", "_pos_embed", "blocks", "num_prefix_tokens"):
        if not hasattr(model, name):
            raise TypeError(
                f"attention analysis needs a timm VisionTransformer; {type(model).__name__} "
                f"has no `{name}`. Load the model with hybrid_distill.files.load_model."
            )
    for block in model.blocks:
        check_block(block, eva=True)
    if getattr(model, "decoder", None) is not None and model.num_prefix_tokens != 1:
        raise TypeError("decoder analysis needs a student with a CLS token and no registers")


def num_layers(model: nn.Module) -> int:
    """Analysed layers: the encoder's blocks, then a student's decoder blocks when attached (figure 3a)."""
    decoder = getattr(model, "decoder", None)
    return len(model.blocks) + (len(decoder.blocks) if decoder is not None else 0)


def geometry(model: nn.Module, images: torch.Tensor) -> dict:
    """Grid, patch size and prefix count of a ViT for images (B, 3, H, W)."""
    ph, pw = model.patch_embed.patch_size
    return {
        "grid_size": (images.shape[-2] // ph, images.shape[-1] // pw),
        "patch_size": (ph, pw),
        "num_prefix_tokens": int(model.num_prefix_tokens),
    }


@torch.no_grad()
def reduce_attention(model: nn.Module, images: torch.Tensor, reduce: Callable[[int, torch.Tensor], object]) -> list:
    """[reduce(i, probs (B, H, N, N)) for every block i], one block's maps alive at a time."""
    model = unwrap(model)
    check_vit(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            x, rope = embed_with_rope(model, images.to(device, torch.float32))  # (B, N, D) entering block 0
            every = all_indices(x.shape[0], x.shape[1] - model.num_prefix_tokens, device)
            out = []
            for i, block in enumerate(model.blocks):
                x, probs = attention_probs(block, x, rope_at(rope, every, i))
                out.append(reduce(i, probs))
            decoder = getattr(model, "decoder", None)
            if decoder is not None:  # every token, no mask: the decoder as direct distillation runs it
                x = decoder.enter(model.norm(x), all_indices(x.shape[0], x.shape[1] - 1, device))
                for j, block in enumerate(decoder.blocks):
                    x, probs = attention_probs(block, x)
                    out.append(reduce(len(model.blocks) + j, probs))
    finally:
        model.train(was_training)
    return out


def batch_metrics(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metrics of every block: {name: (layers, B, H)} on the CPU, names in METRICS."""
    g = geometry(unwrap(model), images)

    def reduce(_, probs):
        return torch.stack(
            [
                attention_distance(probs, g["grid_size"], g["patch_size"], g["num_prefix_tokens"], True),
                attention_distance(probs, g["grid_size"], g["patch_size"], g["num_prefix_tokens"], False),
                attention_nmi(probs, g["num_prefix_tokens"]),
            ]
        ).cpu()  # (3, B, H)

    per_layer = torch.stack(reduce_attention(model, images, reduce), dim=1)  # (3, layers, B, H)
    return dict(zip(METRICS, per_layer.unbind(0)))


def dataset_metrics(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """batch_metrics over batches of normalised images, concatenated: {name: (layers, images, H)}."""
    parts = [batch_metrics(model, images) for images in batches]
    if not parts:
        raise ValueError("no images to analyse: the data gave no batches")
    return {name: torch.cat([p[name] for p in parts], dim=1) for name in METRICS}


def query_maps(model: nn.Module, images: torch.Tensor, layers: Sequence[int], queries: Sequence[int]) -> torch.Tensor:
    """Head-mean attention of query patches to patch keys: (len(layers), B, len(queries), L).

    Queries index patches in row-major grid order (prefix excluded); prefix columns are dropped and
    each row is renormalised over patches, so a map is a distribution over the image (paper fig. 5c).
    """
    g = geometry(unwrap(model), images)
    P, L, depth = g["num_prefix_tokens"], g["grid_size"][0] * g["grid_size"][1], num_layers(unwrap(model))
    bad_layers = [layer for layer in layers if not -depth <= layer < depth]
    bad_queries = [q for q in queries if not 0 <= q < L]
    if bad_layers or bad_queries:
        raise ValueError(
            f"layers must lie in [-{depth}, {depth}) and query patches in [0, {L}) for this model; "
            f"got layers {bad_layers} and queries {bad_queries} out of range"
        )
    rows = torch.as_tensor(list(queries), dtype=torch.long) + P
    wanted = {layer % depth for layer in layers}

    def reduce(i, probs):
        if i not in wanted:
            return None
        a = probs[:, :, rows.to(probs.device), P:].mean(dim=1)  # (B, Q, L)
        return (a / a.sum(dim=-1, keepdim=True)).cpu()

    kept = reduce_attention(model, images, reduce)
    return torch.stack([kept[layer % depth] for layer in layers])
