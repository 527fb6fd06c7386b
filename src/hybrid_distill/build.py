"""Config -> student and teachers, with the checks that must fail before training starts."""
from omegaconf import DictConfig

from .config import ConfigError, Decoder, MaskStyle, RelationHeads
from .models.decoder import Decoder as DecoderBlocks
from .models.fd_encoder import create_student_vit
from .models.mask_recon import MaskRecon
from .models.student import RelationSpec, Student
from .models.teacher import Teacher, build_teacher_model
from .models.tokens import grid_size
from .targets import TeacherSet


def build_backbone(cfg: DictConfig):
    kwargs = dict(cfg.student.model_kwargs)
    kwargs.setdefault("drop_path_rate", cfg.student.drop_path)
    return create_student_vit(cfg.student.arch, kwargs, cfg.student.fd_encoder)


def build_teachers(cfg: DictConfig, student_grid) -> tuple[TeacherSet, dict]:
    """The frozen teachers and their manifest records (file, sha256, source, licence)."""
    if not cfg.teachers:
        raise ConfigError("no teachers configured: add teachers.<name>.arch=... (see configs/)")
    teachers, records = {}, {}
    for name, tcfg in cfg.teachers.items():
        model, records[name] = build_teacher_model(name, tcfg, student_grid)
        teachers[name] = Teacher(name, tcfg, model, student_grid)
    grid = tuple(student_grid)
    return TeacherSet(teachers, cfg.masking, grid[0] * grid[1]), records


def check_heads(name: str, teacher: Teacher, student_heads: int, tcfg) -> None:
    if tcfg.relation_blocks and tcfg.relation_heads is RelationHeads.per_head \
            and teacher.num_heads != student_heads:
        raise ConfigError(
            f"teacher '{name}' has {teacher.num_heads} heads but the student has {student_heads}: per-head "
            f"relations need equal counts; set teachers.{name}.relation_heads=head_mean or change the student")


def build_student(cfg: DictConfig, teachers: TeacherSet, backbone=None, fused_attention: bool = True) -> Student:
    backbone = backbone if backbone is not None else build_backbone(cfg)
    heads, specs = {}, []
    for name, teacher in teachers.teachers.items():
        tcfg = cfg.teachers[name]
        check_heads(name, teacher, backbone.blocks[0].attn.num_heads, tcfg)
        if tcfg.features:
            heads[name] = teacher.model.embed_dim
        specs += [RelationSpec(name, b, tcfg.relation_kind, tcfg.relation_heads) for b in tcfg.relation_blocks]
    identity = Decoder(cfg.student.decoder) is Decoder.none
    if identity:
        check_widths(heads, backbone.embed_dim)
    return Student(backbone, cfg.student.mean, cfg.student.std, heads, specs, cfg.train.activation_checkpointing,
                   fused_attention, build_decoder(cfg.student, backbone), build_recon(cfg.student, backbone),
                   linear_heads=not identity)


def check_widths(head_dims: dict[str, int], width: int) -> None:
    """decoder=none predicts with the encoder's tokens themselves: only where the widths already match."""
    for name, dim in head_dims.items():
        if dim != width:
            raise ConfigError(f"student.decoder=none needs teacher '{name}' width {dim} to equal the student's "
                              f"{width}: set student.decoder=linear or a student of width {dim}")


def build_decoder(student_cfg, backbone) -> DecoderBlocks | None:
    """dBOT's asymmetric decoder of the student's width and heads (paper 2.2), or None."""
    if Decoder(student_cfg.decoder) is not Decoder.blocks:
        return None
    block = backbone.blocks[0]
    return DecoderBlocks(backbone.embed_dim, student_cfg.decoder_depth, block.attn.num_heads, grid_size(backbone),
                         block.mlp.fc1.out_features / backbone.embed_dim,
                         mask_token=MaskStyle(student_cfg.mask_recon.style) is MaskStyle.dbot)


def build_recon(student_cfg, backbone) -> MaskRecon | None:
    recon = student_cfg.mask_recon
    if MaskStyle(recon.style) is MaskStyle.none:
        return None
    try:
        return MaskRecon(recon.style, recon.ratio, recon.patch, backbone.patch_embed.patch_size[0],
                         grid_size(backbone), backbone.embed_dim)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_models(cfg: DictConfig, student_fused_attention: bool = True):
    """Student, teachers and the teachers' manifest records; `student_fused_attention`: SDPA in the
    student (models/attention.py, student_fused_attention picks it per device)."""
    backbone = build_backbone(cfg)
    teachers, records = build_teachers(cfg, grid_size(backbone))
    return build_student(cfg, teachers, backbone, student_fused_attention), teachers, records
