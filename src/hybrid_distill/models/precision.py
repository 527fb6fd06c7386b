"""The frozen teachers' precision (`train.teacher_precision`): fp32, bf16, or FP8 matrix products.

'auto' keeps the trainer's choice: bf16 teachers when the student trains under bf16 autocast, fp32
otherwise. Normalisation and targets stay fp32 whatever the teachers run in. The precision is a
constructor argument of `Teacher`, applied once when it is built.
"""

import torch
from torch import nn

from ..config_schema import ConfigError, TeacherPrecision
from .fp8 import to_float8


def resolve_teacher_precision(precision, amp_dtype: torch.dtype | None) -> TeacherPrecision:
    precision = TeacherPrecision(precision)
    if precision is TeacherPrecision.auto:
        return TeacherPrecision.bf16 if amp_dtype is torch.bfloat16 else TeacherPrecision.fp32
    if precision is TeacherPrecision.fp8 and amp_dtype is not torch.bfloat16:
        raise ConfigError(
            "train.teacher_precision=fp8 runs the teachers in bf16 around their FP8 products: "
            "set train.amp=bf16 (or auto on CUDA)"
        )
    return precision


def apply_precision(model: nn.Module, precision: TeacherPrecision, device: torch.device) -> nn.Module:
    """A teacher backbone already on `device` cast (bf16) or quantised (fp8: bf16 weights, then every
    Linear of its blocks in e4m3)."""
    if precision is TeacherPrecision.fp32:
        return model
    model.to(torch.bfloat16)
    if precision is TeacherPrecision.fp8:
        to_float8(model.blocks, device)
    return model
