"""Diversity and discrimination of attention maps (paper section 2.1): distance and NMI.

Pure functions of post-softmax attention (B, H, N, N), vectorised over images, heads, queries
and keys. Both return one number per image and head, (B, H); averaging over images and heads
happens afterwards, never on the maps themselves.
"""

import math

import torch

# Park et al. 2023 (naver-ai/cl-vs-mim) add this to every attention entry before taking logs.
NMI_EPS = 1e-8


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else tuple(int(v) for v in value)


def patch_attention(attn: torch.Tensor, num_prefix_tokens: int, num_patches: int | None = None) -> torch.Tensor:
    """(B, H, N, N) -> (B, H, L, L): rows and columns of the prefix tokens (CLS, registers) dropped."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (B, H, N, N) post-softmax maps, got shape {tuple(attn.shape)}")
    L = attn.shape[-1] - num_prefix_tokens
    if num_patches is not None and L != num_patches:
        raise ValueError(
            f"attention has {attn.shape[-1]} tokens = {num_prefix_tokens} prefix + {L} patches, "
            f"but the grid has {num_patches} patches; check grid_size and num_prefix_tokens"
        )
    if L < 2:
        raise ValueError(f"need at least 2 patch tokens after dropping {num_prefix_tokens} prefix tokens, got {L}")
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:]
    return a.to(torch.promote_types(a.dtype, torch.float32))


def grid_distances(grid_size, patch_size, device=None, dtype=torch.float32) -> torch.Tensor:
    """(L, L) Euclidean distance in pixels between patch centres on a row-major grid (ViT patch order)."""
    (gh, gw), (ph, pw) = _pair(grid_size), _pair(patch_size)
    rows, cols = torch.meshgrid(
        torch.arange(gh, device=device, dtype=dtype), torch.arange(gw, device=device, dtype=dtype), indexing="ij"
    )
    xy = torch.stack([rows.flatten() * ph, cols.flatten() * pw], dim=-1)  # (L, 2) pixels
    return torch.cdist(xy, xy)


def attention_distance(
    attn: torch.Tensor, grid_size, patch_size, num_prefix_tokens: int = 1, renormalize: bool = True
) -> torch.Tensor:
    """Average attention distance in pixels, (B, H).

    Per query: sum over keys of attention x distance; then mean over queries (ViT, Dosovitskiy et
    al. 2021, fig. 7). `renormalize=True` rescales each query row to sum to 1 after the prefix
    columns are dropped (Park et al. 2023, cl-vs-mim); `False` keeps the prefix mass out of the
    sum, so rows that attend to CLS pull the distance down (dBOT `analysis.py`).
    """
    (gh, gw) = _pair(grid_size)
    a = patch_attention(attn, num_prefix_tokens, gh * gw)  # (B, H, L, L)
    if renormalize:
        a = a / a.sum(dim=-1, keepdim=True)
    dist = grid_distances((gh, gw), patch_size, a.device, a.dtype)  # (L, L)
    return torch.einsum("bhqk,qk->bhq", a, dist).mean(dim=-1)  # (B, H)


def uniform_distance(grid_size, patch_size) -> float:
    """The average attention distance (pixels) of uniform attention over the patches: the reference a
    head's distance is read against (a head above it looks far, below it looks near)."""
    return float(grid_distances(_pair(grid_size), patch_size, torch.device("cpu"), torch.float64).mean())


def attention_nmi(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Normalised mutual information between queries and keys, (B, H) (Park et al. 2023; paper 2.1).

    p(q) = 1/L uniform, p(k|q) = attention row (+1e-8, renormalised), p(k) = mean_q p(k|q);
    NMI = I(q; k) / sqrt(H(q) H(k)) in nats (Strehl and Ghosh 2002). 0: every query sees the same
    keys (attention collapse); 1: each query sees its own keys.
    """
    a = patch_attention(attn, num_prefix_tokens) + NMI_EPS
    p_k_given_q = a / a.sum(dim=-1, keepdim=True)  # (B, H, L, L)
    p_k = p_k_given_q.mean(dim=-2)  # (B, H, L), p(q) uniform
    log_ratio = p_k_given_q.log() - p_k.log().unsqueeze(-2)
    mutual_info = (p_k_given_q * log_ratio).sum(dim=-1).mean(dim=-1)  # (B, H)
    h_q = math.log(a.shape[-2])
    h_k = -(p_k * p_k.log()).sum(dim=-1)  # (B, H)
    return mutual_info / (h_q * h_k).sqrt()
