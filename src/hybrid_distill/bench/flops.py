"""The CPU attention kernels torch's FlopCounterMode does not count by itself, with the formulas it uses
for the CUDA ones (`torch.utils.flop_counter.sdpa_flop_count`): the bench's GFLOP per image on a CPU."""

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


SDPA_CPU = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}
