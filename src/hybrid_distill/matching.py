"""Which student block matches each teacher target, and whether the student can match it at all.

A target read at teacher block i (its features, its relation R^i, MSA^i or T^i; paper eq. 2-3) is
matched by one named student block: `teachers.<name>.student_blocks` maps teacher block -> student
block, and an unlisted block goes to the same relative depth, floor((i + 1) * S / T) - 1 (0-indexed;
the identity when student and teacher are equally deep, e.g. teacher block 9 of 12 -> student 4 of 6).
Every refusal is one line naming the config key to change.
"""

from .config_schema import ConfigError, RelationHeads, RelationKind
from .relations import form, resolve_block
from .targets import FEATURES, Target


def same_relative_depth(block: int, teacher_depth: int, student_depth: int) -> int:
    """0-indexed teacher block -> the student block whose output sits at the same fraction of depth."""
    return max(0, (block + 1) * student_depth // teacher_depth - 1)


def target_blocks(name: str, tcfg, teacher_depth: int) -> list[int]:
    """The teacher blocks where `name` gives a target, resolved: its feature block, its relation blocks."""
    blocks = (
        [resolve_block(tcfg.feature_block, teacher_depth, f"teachers.{name}.feature_block")] if tcfg.features else []
    )
    return blocks + [resolve_block(b, teacher_depth, f"teachers.{name}.relation_blocks") for b in tcfg.relation_blocks]


def block_matches(name: str, tcfg, teacher_depth: int, student_depth: int) -> dict[int, int]:
    """Resolved teacher block -> resolved student block, for every block where `name` gives a target."""
    blocks = target_blocks(name, tcfg, teacher_depth)
    named = {}
    for t, s in dict(tcfg.student_blocks).items():
        key = f"teachers.{name}.student_blocks"
        t_block = resolve_block(int(t), teacher_depth, f"{key} (teacher '{name}')")
        if t_block not in blocks:
            raise ConfigError(f"{key}: teacher block {t} gives no target; its target blocks are {sorted(set(blocks))}")
        named[t_block] = resolve_block(int(s), student_depth, f"{key}.{t} (the student)")
    return {b: named.get(b, same_relative_depth(b, teacher_depth, student_depth)) for b in blocks}


def check_can_match(name: str, tcfg, teacher_attn, student_attn) -> None:
    """Per-head relations and MSA need the teacher's head count; MSA (no head of its own) its head width."""
    kind, heads = RelationKind(tcfg.relation_kind), RelationHeads(tcfg.relation_heads)
    if not tcfg.relation_blocks or not form(kind).per_head:
        return
    if heads is RelationHeads.per_head and teacher_attn.num_heads != student_attn.num_heads:
        raise ConfigError(
            f"teacher '{name}' has {teacher_attn.num_heads} heads but the student has {student_attn.num_heads}: "
            f"per-head relations need equal counts; set teachers.{name}.relation_heads=head_mean or change the student"
        )
    if form(kind).head_width and teacher_attn.head_dim != student_attn.head_dim:
        raise ConfigError(
            f"teachers.{name}.relation_kind={kind.value} compares head outputs of width {teacher_attn.head_dim} "
            f"(teacher) and {student_attn.head_dim} (student) with no head between them: use a student of head width "
            f"{teacher_attn.head_dim} or relation_kind=features"
        )


def match_targets(cfg, teachers: dict, student) -> list[Target]:
    """The one list of targets (targets.py) of every teacher (`Teacher`s by name), in config order and
    each teacher's features first: each target matched at its student block. Features of the teacher's
    last block are the student's last block's (its final tokens, after any decoder)."""
    depth, out = len(student.blocks), []
    for name, teacher in teachers.items():
        tcfg = cfg.teachers[name]
        check_can_match(name, tcfg, teacher.model.blocks[0].attn, student.blocks[0].attn)
        match = block_matches(name, tcfg, teacher.depth, depth)
        width = teacher.model.embed_dim
        if tcfg.features:
            block = teacher.feature_block
            out.append(Target(name, block, depth - 1 if block == teacher.depth - 1 else match[block], FEATURES, width))
        kind, heads = RelationKind(tcfg.relation_kind), RelationHeads(tcfg.relation_heads)
        head = width if form(kind).tokens else None  # T^i through the student's own head
        out += [Target(name, b, match[b], kind, head, heads, teacher.has_cls) for b in teacher.relation_blocks]
    return out
