"""Teacher weights in (official formats, safely), students out (timm, MAE/ViTDet, mmseg/mmpretrain)."""

from ..files import sha256_file
from .export import export, load_timm_export
from .grid import grid_model_kwargs, teacher_input_size
from .safe_load import UnsafeCheckpointError, load_weights, read_torchscript_state_dict
from .teachers import TEACHERS, build_teacher_backbone

__all__ = [
    "TEACHERS",
    "UnsafeCheckpointError",
    "build_teacher_backbone",
    "export",
    "grid_model_kwargs",
    "load_timm_export",
    "load_weights",
    "read_torchscript_state_dict",
    "sha256_file",
    "teacher_input_size",
]
