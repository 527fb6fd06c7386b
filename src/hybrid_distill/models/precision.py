"""The frozen teachers' precision (`train.teacher_precision`): fp32, bf16, or FP8 matrix products.

'auto' keeps the trainer's choice: bf16 teachers when the student trains under bf16 autocast, fp32
otherwise. Normalisation and targets stay fp32 whatever the teachers run in.
"""
import torch

from ..config import ConfigError, TeacherPrecision
from .fp8 import to_float8


def resolve_teacher_precision(precision, amp_dtype: torch.dtype | None) -> TeacherPrecision:
    precision = TeacherPrecision(precision)
    if precision is TeacherPrecision.auto:
        return TeacherPrecision.bf16 if amp_dtype is torch.bfloat16 else TeacherPrecision.fp32
    return precision


def set_teacher_precision(teachers, precision, amp_dtype: torch.dtype | None,
                          device: torch.device) -> TeacherPrecision:
    """Cast (bf16) or quantise (fp8: bf16 weights, then every Linear in e4m3) the teachers in place,
    after they moved to `device`. Returns the precision applied."""
    precision = resolve_teacher_precision(precision, amp_dtype)
    if precision is TeacherPrecision.fp32:
        return precision
    teachers.cast(torch.bfloat16)
    if precision is TeacherPrecision.fp8:
        if amp_dtype is not torch.bfloat16:
            raise ConfigError("train.teacher_precision=fp8 runs the teachers in bf16 around their FP8 products: "
                              "set train.amp=bf16 (or auto on CUDA)")
        for teacher in teachers.teachers.values():
            to_float8(teacher.model.blocks, device)
    return precision
