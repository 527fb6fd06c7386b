"""Config -> student and teachers, with the checks that must fail before training starts."""
from omegaconf import DictConfig

from .config import ConfigError, RelationHeads
from .models.load import create_vit
from .models.student import RelationSpec, Student
from .models.teacher import Teacher, build_teacher_model
from .models.tokens import grid_size
from .targets import TeacherSet


def build_backbone(cfg: DictConfig):
    kwargs = dict(cfg.student.model_kwargs)
    kwargs.setdefault("drop_path_rate", cfg.student.drop_path)
    return create_vit(cfg.student.arch, **kwargs)


def build_teachers(cfg: DictConfig, student_grid) -> tuple[TeacherSet, dict]:
    """The frozen teachers and their manifest records (file, sha256, source, licence)."""
    if not cfg.teachers:
        raise ConfigError("no teachers configured: add teachers.<name>.arch=... (see configs/)")
    teachers, records = {}, {}
    for name, tcfg in cfg.teachers.items():
        model, records[name] = build_teacher_model(name, tcfg, student_grid)
        check_finite(name, tcfg, model)
        teachers[name] = Teacher(name, tcfg, model, student_grid)
    grid = tuple(student_grid)
    return TeacherSet(teachers, cfg.masking, grid[0] * grid[1]), records


def check_finite(name: str, tcfg, model) -> None:
    """A teacher with NaN or inf weights would make every target non-finite: refuse it at load."""
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:
        raise ConfigError(f"teachers.{name}.weights={tcfg.weights}: tensor '{bad}' holds NaN or inf values; "
                          "re-download or re-export the teacher")


def check_heads(name: str, teacher: Teacher, student_heads: int, tcfg) -> None:
    if tcfg.relation_blocks and RelationHeads(tcfg.relation_heads) is RelationHeads.per_head \
            and teacher.num_heads != student_heads:
        raise ConfigError(
            f"teacher '{name}' has {teacher.num_heads} heads but the student has {student_heads}: per-head "
            f"relations need equal counts; set teachers.{name}.relation_heads=head_mean or change the student")


def build_student(cfg: DictConfig, teachers: TeacherSet, backbone=None) -> Student:
    backbone = backbone if backbone is not None else build_backbone(cfg)
    heads, specs = {}, []
    for name, teacher in teachers.teachers.items():
        tcfg = cfg.teachers[name]
        check_heads(name, teacher, backbone.blocks[0].attn.num_heads, tcfg)
        if tcfg.features:
            heads[name] = teacher.model.embed_dim
        specs += [RelationSpec(name, b, tcfg.relation_kind, tcfg.relation_heads) for b in tcfg.relation_blocks]
    return Student(backbone, cfg.student.mean, cfg.student.std, heads, specs, cfg.train.activation_checkpointing)


def build_models(cfg: DictConfig):
    backbone = build_backbone(cfg)
    teachers, records = build_teachers(cfg, grid_size(backbone))
    return build_student(cfg, teachers, backbone), teachers, records
