"""Config -> student and teachers, with the checks that must fail before training starts."""

import torch
from omegaconf import DictConfig

from .config_schema import ConfigError, DecoderKind, MaskStyle, TeacherPrecision
from .matching import match_targets
from .models.decoder import Decoder
from .models.fd_encoder import create_student_vit
from .models.mask_recon import MaskRecon
from .models.precision import resolve_teacher_precision
from .models.student import Student
from .models.teacher import Teacher, build_teacher_model
from .models.tokens import grid_size
from .targets import TeacherSet


def build_backbone(cfg: DictConfig):
    kwargs = dict(cfg.student.model_kwargs)
    kwargs.setdefault("drop_path_rate", cfg.student.drop_path)
    return create_student_vit(cfg.student.arch, kwargs, cfg.student.fd_encoder)


def build_teachers(
    cfg: DictConfig, student, device=None, precision: TeacherPrecision = TeacherPrecision.fp32
) -> tuple[TeacherSet, dict]:
    """The frozen teachers on `device` in `precision` (resolved), with the targets the student
    `student` (its timm backbone) matches (matching.py), and their manifest records (file, sha256,
    source, licence)."""
    if not cfg.teachers:
        raise ConfigError("no teachers configured: add teachers.<name>.arch=... (see configs/)")
    teachers, records, grid = {}, {}, grid_size(student)
    for name, tcfg in cfg.teachers.items():
        model, records[name] = build_teacher_model(name, tcfg, grid)
        check_finite(name, tcfg, model)
        teachers[name] = Teacher(name, tcfg, model, grid, precision=precision, device=device)
    targets = match_targets(cfg, teachers, student)
    return TeacherSet(teachers, cfg.masking, grid[0] * grid[1], targets), records


def check_finite(name: str, tcfg, model) -> None:
    """A teacher with NaN or inf weights would make every target non-finite: refuse it at load."""
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:
        raise ConfigError(
            f"teachers.{name}.weights={tcfg.weights}: tensor '{bad}' holds NaN or inf values; "
            "re-download or re-export the teacher"
        )


def build_student(cfg: DictConfig, teachers: TeacherSet, backbone=None, fused_attention: bool = True) -> Student:
    """The student of the teachers' targets (each matched at its student block), token targets through
    their own head."""
    backbone = backbone if backbone is not None else build_backbone(cfg)
    identity = DecoderKind(cfg.student.decoder) is DecoderKind.none
    if identity:
        check_widths({t.head_name: t.head for t in teachers.targets if t.head is not None}, backbone.embed_dim)
    return Student(
        backbone,
        cfg.student.mean,
        cfg.student.std,
        teachers.targets,
        cfg.train.activation_checkpointing,
        fused_attention,
        build_decoder(cfg.student, backbone),
        build_recon(cfg.student, backbone),
        linear_heads=not identity,
    )


def check_widths(head_dims: dict[str, int], width: int) -> None:
    """decoder=none predicts with the encoder's tokens themselves: only where the widths already match."""
    for name, dim in head_dims.items():
        if dim != width:
            raise ConfigError(
                f"student.decoder=none needs teacher '{name}' width {dim} to equal the student's "
                f"{width}: set student.decoder=linear or a student of width {dim}"
            )


def build_decoder(student_cfg, backbone) -> Decoder | None:
    """dBOT's asymmetric decoder of the student's width and heads (paper 2.2), or None."""
    if DecoderKind(student_cfg.decoder) is not DecoderKind.blocks:
        return None
    block = backbone.blocks[0]
    return Decoder(
        backbone.embed_dim,
        student_cfg.decoder_depth,
        block.attn.num_heads,
        grid_size(backbone),
        block.mlp.fc1.out_features / backbone.embed_dim,
        mask_token=MaskStyle(student_cfg.mask_recon.style) is MaskStyle.dbot,
    )


def build_recon(student_cfg, backbone) -> MaskRecon | None:
    recon = student_cfg.mask_recon
    if MaskStyle(recon.style) is MaskStyle.none:
        return None
    try:
        return MaskRecon(
            recon.style,
            recon.ratio,
            recon.patch,
            backbone.patch_embed.patch_size[0],
            grid_size(backbone),
            backbone.embed_dim,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_models(
    cfg: DictConfig,
    student_fused_attention: bool = True,
    device=None,
    amp_dtype: torch.dtype | None = None,
    teacher_precision=None,
):
    """Student, teachers (on `device`, in `teacher_precision` or the config's, resolved against the
    student's autocast `amp_dtype`) and the teachers' manifest records; `student_fused_attention`: SDPA
    in the student (models/attention.py, student_fused_attention picks it per device)."""
    backbone = build_backbone(cfg)
    precision = resolve_teacher_precision(teacher_precision or cfg.train.teacher_precision, amp_dtype)
    teachers, records = build_teachers(cfg, backbone, device, precision)
    return build_student(cfg, teachers, backbone, student_fused_attention), teachers, records
