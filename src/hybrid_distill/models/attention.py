"""Attention of a timm ViT block with its logits exposed.

timm's fused attention (F.scaled_dot_product_attention) never returns the attention map, so the
blocks whose relations are needed run this explicit path instead. It computes q, k and v once
from the block's own qkv projection, exactly as timm's non-fused branch does
(timm/layers/attention.py, Attention.forward), so no weight is copied and nothing is forked.
"""
import torch
from torch import nn
from timm.layers import Attention
from timm.models.vision_transformer import Block

from .fd_encoder import FDAttention, position_bias


def check_block(block: nn.Module) -> None:
    """Fail early, naming the class, for blocks whose attention we cannot open."""
    if not isinstance(block, Block) or type(block.attn) not in (Attention, FDAttention):
        raise TypeError(
            f"hybrid-distill reads q and k from timm's vision_transformer.Block with a plain Attention; "
            f"got {type(block).__name__} with {type(getattr(block, 'attn', None)).__name__}. "
            "Use a timm VisionTransformer model (vit_*, deit_*, *_clip_*).")


def choose_attention(model: nn.Module, fused: bool) -> None:
    """timm's per-module switch between SDPA and the explicit softmax path (the same function). Called
    only by the constructors of the models that own `model` (Teacher, Student)."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


def student_fused_attention(device: torch.device) -> bool:
    """SDPA for the student on CUDA only: on the CPU, SDPA's bf16 backward at 1 + K = 67 tokens is slower
    than the explicit path (`hybrid-distill bench`, '- explicit_student_attention')."""
    return device.type == "cuda"


def qkv_heads(attn: Attention, x: torch.Tensor):
    """x (B, N, D) already normed -> q, k, v, each (B, H, N, hd), with timm's q/k norms applied."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention_logits(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits q k^T * hd^-0.5 (paper eq. 2, with MSA's 1/sqrt(d)): (B, H, N, N)."""
    q, k, _ = qkv_heads(attn, x)
    return (q * attn.scale) @ k.transpose(-2, -1)


def attention_with_logits(attn: Attention, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """timm Attention.forward (non-fused branch) that also returns the logits (B, H, N, N) its softmax
    sees: q k^T * hd^-0.5, plus the additive attn_mask or the module's own bias (FD's encoder), and the
    per-head outputs softmax(logits) v (B, H, N, hd), before `attn.norm` and `proj` (eq. 2's MSA)."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    q, k, v = qkv_heads(attn, x)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
    bias = attn_mask if attn_mask is not None else position_bias(attn, N)
    if bias is not None:
        logits = logits + bias
    heads = attn.attn_drop(logits.softmax(dim=-1)) @ v  # (B, H, N, hd)
    out = attn.norm(heads.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), logits, heads


def block_with_parts(block: Block, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """timm Block.forward that also returns its attention logits and per-head outputs:
    (x (B, N, D), logits (B, H, N, N), heads (B, H, N, hd))."""
    a, logits, heads = attention_with_logits(block.attn, block.norm1(x), attn_mask)
    x = x + block.drop_path1(block.ls1(a))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, logits, heads


def block_with_logits(block: Block, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """timm Block.forward that also returns its attention logits: (x (B, N, D), logits (B, H, N, N))."""
    x, logits, _ = block_with_parts(block, x, attn_mask)
    return x, logits


def attention_probs(block: Block, x: torch.Tensor):
    """Post-softmax attention of a block and its output: (x, probs (B, H, N, N)). For analysis."""
    x, logits = block_with_logits(block, x)
    return x, logits.softmax(dim=-1)
