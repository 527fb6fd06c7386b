"""What an OpenMMLab ViT must be built with to take our mmseg / mmpretrain export strictly.

Checked against mmseg 1.2.2 `models/backbones/vit.py` and mmpretrain 1.2.0
`models/backbones/vision_transformer.py` (tests/test_export_mm.py builds both from these settings):
- `patch_bias=True` (mmseg): its default is False, and its `init_cfg=Pretrained` load is not strict,
  so the patch embedding's bias would be dropped with only a log line (CLS features off by ~0.2).
- `norm_cfg=dict(type='LN', eps=1e-6)`: timm's ViT LayerNorm eps; both libraries default to 1e-5.
- `final_norm=True`, `with_cls_token=True`; `pre_norm=True` where the student has timm's `norm_pre`.
"""

import torch
from torch import nn


def _geometry(model: nn.Module) -> dict:
    block = model.blocks[0]
    return dict(
        img_size=list(model.patch_embed.img_size),
        patch_size=model.patch_embed.patch_size[0],
        embed_dims=model.embed_dim,
        num_layers=len(model.blocks),
        num_heads=block.attn.num_heads,
        hidden=block.mlp.fc1.out_features,
        qkv_bias=block.attn.qkv.bias is not None,
        eps=block.norm1.eps,
    )


def mm_settings(model: nn.Module, layout: str) -> dict:
    """Keyword arguments of the OpenMMLab `VisionTransformer` that loads this student's export."""
    g = _geometry(model)
    common = dict(
        img_size=g["img_size"],
        patch_size=g["patch_size"],
        qkv_bias=g["qkv_bias"],
        final_norm=True,
        with_cls_token=True,
        norm_cfg=dict(type="LN", eps=g["eps"]),
    )
    if layout == "mmseg":
        if g["hidden"] % g["embed_dims"]:
            raise ValueError(
                f"mmseg's ViT builds its MLP as an integer mlp_ratio x embed_dims; this student's "
                f"{g['hidden']} / {g['embed_dims']} is not an integer: export --format mmpretrain"
            )
        return dict(
            common,
            embed_dims=g["embed_dims"],
            num_layers=g["num_layers"],
            num_heads=g["num_heads"],
            mlp_ratio=g["hidden"] // g["embed_dims"],
            patch_bias=model.patch_embed.proj.bias is not None,
            interpolate_mode="bicubic",
        )
    arch = dict(
        embed_dims=g["embed_dims"],
        num_layers=g["num_layers"],
        num_heads=g["num_heads"],
        feedforward_channels=g["hidden"],
    )
    return dict(common, arch=arch, pre_norm=not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity))


def mm_backbone(layout: str, settings: dict):
    """The library's own VisionTransformer built with `settings`, or None where it does not import
    (mmseg 1.x imports mmcv's compiled ops at package import, which mmcv-lite lacks)."""
    try:
        if layout == "mmseg":
            from mmseg.models.backbones import VisionTransformer

            return VisionTransformer(**settings, output_cls_token=True)
        from mmpretrain.models.backbones import VisionTransformer

        return VisionTransformer(**settings, out_type="raw")
    except ImportError:
        return None


def mm_tokens(backbone, layout: str, images):
    """(B, N, D) final-normed tokens, CLS first, as timm's `forward_features` gives them."""
    out = backbone(images)[-1]
    if layout == "mmseg":
        patches, cls = out  # (B, D, h, w), (B, D)
        return torch.cat([cls[:, None], patches.flatten(2).transpose(1, 2)], dim=1)
    return out
