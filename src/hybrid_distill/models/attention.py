"""Attention of a timm ViT block with its logits exposed.

timm's fused attention (F.scaled_dot_product_attention) never returns the attention map, so the
blocks whose relations are needed run this explicit path instead. It computes q, k and v once
from the block's own projections, exactly as timm's non-fused branch does (timm/layers/attention.py,
Attention.forward; for the Eva family, timm/models/eva.py EvaAttention.forward and AttentionRope.forward,
rotary embedding included), so no weight is copied and nothing is forked.
"""

import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionRope, apply_rot_embed_cat
from timm.models.eva import EvaAttention, EvaBlock
from timm.models.vision_transformer import Block
from torch import nn

from ..config_schema import ConfigError
from .fd_encoder import FDAttention, position_bias

EVA_ATTENTION = (EvaAttention, AttentionRope)
VIT_MODELS = "timm VisionTransformer Blocks (vit_*, deit_*, *_clip_*)"
EVA_MODELS = "the Eva family's EvaBlock (eva02_*, vit_*_dinov3, vit_pe_core_*)"


class UnsupportedBlock(ConfigError):
    """A model whose attention blocks hybrid-distill cannot open (one line, exit code 2 in the CLI)."""


def is_eva_block(block: nn.Module) -> bool:
    """timm's pre-norm EvaBlock (timm/models/eva.py): rotary embeddings passed to every block, q, k and v
    from EvaAttention or AttentionRope. EvaBlockPostNorm, which attends to its un-normed input, is not one."""
    return type(block) is EvaBlock and type(block.attn) in EVA_ATTENTION


def check_block(block: nn.Module, eva: bool = False) -> None:
    """Fail early, naming the class, for blocks whose attention we cannot open. `eva`: the Eva family too
    (teachers, analysis); a student is a VisionTransformer (models/student.py)."""
    if isinstance(block, Block) and type(block.attn) in (Attention, FDAttention):
        return
    if eva and is_eva_block(block):
        return
    supported = f"{VIT_MODELS} or {EVA_MODELS}" if eva else VIT_MODELS
    raise UnsupportedBlock(
        f"hybrid-distill reads q and k from {supported}; got {type(block).__name__} with "
        f"{type(getattr(block, 'attn', None)).__name__}"
    )


def run_block(block: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
    """The block's own forward; an Eva block also takes the rotary embedding of x's patches (`tokens.rope_at`)."""
    return block(x) if rope is None else block(x, rope=rope)


def choose_attention(model: nn.Module, fused: bool) -> None:
    """timm's per-module switch between SDPA and the explicit softmax path (the same function). Called
    only by the constructors of the models that own `model` (Teacher, Student)."""
    for m in model.modules():
        if isinstance(m, (Attention, *EVA_ATTENTION)):
            m.fused_attn = fused


def student_fused_attention(device: torch.device) -> bool:
    """SDPA for the student on CUDA only: on the CPU, SDPA's bf16 backward at 1 + K = 67 tokens is slower
    than the explicit path (`hybrid-distill bench` at commit 225686b, '- explicit_student_attention': 1.06x; README)."""
    return device.type == "cuda"


def qkv_heads(attn: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None):
    """x (B, N, D) already normed -> q, k, v, each (B, H, N, hd), as the module makes them before its softmax:
    timm's q/k norms applied and, for the Eva family, the rotary embedding `rope` of x's patches."""
    if isinstance(attn, EVA_ATTENTION):
        return eva_qkv_heads(attn, x, rope)
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def eva_qkv_heads(attn: nn.Module, x: torch.Tensor, rope: torch.Tensor | None):
    """EvaAttention / AttentionRope forward up to the softmax (timm/models/eva.py, timm/layers/attention.py):
    fused or separate projections, q/k norms, RoPE on the patches, grouped kv heads repeated (AttentionRope
    repeats them after RoPE, head h reading kv head h // groups)."""
    B, N, _ = x.shape
    if attn.qkv is not None:
        qkv = fused_qkv(attn, x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd)
    else:  # k and v (B, H_kv, N, hd) with grouped kv heads
        q, k, v = (
            proj(x).reshape(B, N, -1, attn.head_dim).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = (with_rope(t, rope, getattr(attn, "rotate_half", False)).type_as(v) for t in (q, k))
    groups = getattr(attn, "num_kv_groups", 1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return q, k, v


def fused_qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N, 3 H hd). EvaAttention keeps q and v biases beside a bias-free qkv Linear (k has none: a zero
    buffer), added inside F.linear or after it (`qkv_bias_separate`); AttentionRope's qkv is a plain Linear."""
    if getattr(attn, "q_bias", None) is None:
        return attn.qkv(x)
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    return attn.qkv(x) + bias if attn.qkv_bias_separate else F.linear(x, attn.qkv.weight, bias)


def with_rope(t: torch.Tensor, rope: torch.Tensor, half: bool) -> torch.Tensor:
    """t (B, H, N, hd) with the rotary embedding rope (B, 1 or H, n, 2 hd) applied to its last n tokens, the
    patches; the prefix tokens before them (CLS, registers) get none, as in timm's Eva attention."""
    P = t.shape[2] - rope.shape[-2]
    return torch.cat([t[:, :, :P], apply_rot_embed_cat(t[:, :, P:], rope, half=half)], dim=2)


def attention_logits(attn: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-softmax logits q k^T * hd^-0.5 (paper eq. 2, with MSA's 1/sqrt(d)): (B, H, N, N)."""
    q, k, _ = qkv_heads(attn, x, rope)
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


def block_with_logits(
    block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, rope: torch.Tensor | None = None
):
    """timm Block.forward that also returns its attention logits: (x (B, N, D), logits (B, H, N, N)). An
    Eva block (a teacher's or an analysed model's, never masked) runs its own forward with `rope`, its
    logits read from its q and k (`attention_logits`)."""
    if is_eva_block(block):
        assert attn_mask is None, "attention masks are FD's student encoder's (models/fd_encoder.py)"
        return block(x, rope=rope), attention_logits(block.attn, block.norm1(x), rope)
    x, logits, _ = block_with_parts(block, x, attn_mask)
    return x, logits


def attention_probs(block: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None):
    """Post-softmax attention of a block and its output: (x, probs (B, H, N, N)). For analysis."""
    x, logits = block_with_logits(block, x, rope=rope)
    return x, logits.softmax(dim=-1)
