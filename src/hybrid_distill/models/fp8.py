"""FP8 (e4m3) matrix products for the frozen teachers' nn.Linear layers, on `torch._scaled_mm`.

Scaling recipe: "rowwise", as torchao's float8 training recipe of that name (torchao/float8/config.py,
Float8LinearRecipeName.ROWWISE) and PyTorch's rowwise `_scaled_mm` tests (test/test_matmul_cuda.py,
test_scaled_mm_vs_emulated_row_wise): one fp32 scale per activation row and one per weight output
channel, each mapping the row's absolute maximum to e4m3's largest finite value (448); the product
accumulates in the tensor cores and comes out in bf16 with the bias added. Weights are quantised once
(the teachers are frozen), activations at every call. Runs on sm_89+ GPUs (Ada, Hopper, Blackwell) and
on CPUs whose torch build has a `_scaled_mm` kernel (torch 2.14's oneDNN one: correct, not faster).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..config_schema import ConfigError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> e4m3 (M, K) and fp32 scales (M, 1) with x ~= q * scale."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """a (M, K) row-major e4m3 @ b (K, N) column-major e4m3 -> bf16 (M, N). Keyword arguments only:
    torch 2.11 and 2.14 name them alike (scale_a, scale_b, bias, out_dtype, use_fast_accum), while
    2.11's positional order has scale_result between bias and out_dtype."""
    return torch._scaled_mm(
        a, b, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True
    )  # fast accumulation: torchao's choice for forward passes


class Float8Linear(nn.Module):
    """A frozen nn.Linear with e4m3 weights (per output channel) and e4m3 activations (per row)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w, w_scale = quantize_rows(linear.weight.detach())  # (N, K), (N, 1)
        self.register_buffer("weight_fp8", w)
        self.register_buffer("weight_scale", w_scale.t().contiguous())  # (1, N)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (N, K), for code that reads a Linear's weight (e.g. a block run at some
        rows only): the same values the fp8 product uses."""
        return (self.weight_fp8.float() * self.weight_scale.t()).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (M, K)
        pad = -rows.shape[0] % 16  # _scaled_mm wants every dimension a multiple of 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        q, scale = quantize_rows(rows)
        out = scaled_mm(q, self.weight_fp8.t(), scale, self.weight_scale, self.bias)  # (M, N) bf16
        return out[: out.shape[0] - pad].view(*x.shape[:-1], self.out_features)


def fp8_unsupported(device: torch.device) -> str | None:
    """Why FP8 teachers cannot run on `device`, or None."""
    if device.type == "cpu":
        try:
            one = torch.ones(16, 16).to(E4M3)
            scaled_mm(one, one.t(), torch.ones(16, 1), torch.ones(1, 16), None)
            return None
        except (RuntimeError, NotImplementedError):
            return (
                f"FP8 teachers need an NVIDIA GPU of compute capability 8.9+ (torch {torch.__version__} has no "
                "CPU _scaled_mm)"
            )
    if device.type != "cuda":
        return f"FP8 teachers need an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper); this run is on {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (
            f"FP8 teachers need compute capability 8.9+ (Ada, Hopper); {torch.cuda.get_device_name(device)} "
            f"is {major}.{minor}"
        )
    return None


def to_float8(model: nn.Module, device: torch.device, check: bool = True) -> nn.Module:
    """Every nn.Linear whose sizes _scaled_mm accepts (multiples of 16) becomes a Float8Linear, in place;
    the others (and convolutions, norms) stay in their dtype. `check=False` skips the device check
    (tests of the module's arithmetic)."""
    reason = fp8_unsupported(device) if check else None
    if reason:
        raise ConfigError(f"{reason}: use train.teacher_precision=bf16")
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(model, name, Float8Linear(child))
        else:
            to_float8(child, device, check=False)
    return model
