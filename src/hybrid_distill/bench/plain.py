"""The plain step, the tests' oracle: the same algorithm written the obvious way. It is the one
deliberate second implementation of the training step (`engine.forward_backward`): the oracle of
tests/test_bench.py, which checks that both give the same losses and gradients, and the baseline of
`hybrid-distill bench`. It opens the step's profiler ranges (engine.py) so the bench reads its phases.

fp32; attention probabilities materialised in every block of every model (what `output_attentions`
does); every teacher run through all its blocks; full N x N relations, then indexed; kept tokens
as boolean masks. It reuses the models, the selector and the loss. Shapes: B batch, N tokens,
P prefix tokens, L patches, K kept.
"""

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ..config_schema import RelationKind
from ..losses import distill_losses
from ..masking import KeepGiven, all_indices
from ..models.attention import block_with_logits
from ..models.student import Student, StudentOutput
from ..models.teacher import Teacher, TeacherOutput
from ..models.tokens import embed_tokens, rope_at
from ..relations import relation_form
from ..targets import Targets, TeacherSet


def plain_teacher(
    teacher: Teacher, pixels: torch.Tensor, mask: torch.Tensor, select
) -> tuple[TeacherOutput, torch.Tensor]:
    """Every block with explicit attention; `mask` (B, L) bool kept patches, narrowed after `select.blocks`."""
    if teacher.kind not in (RelationKind.raw, RelationKind.scaled, RelationKind.softmax) or (
        teacher.cfg.features and teacher.feature_block != teacher.depth - 1
    ):
        raise ValueError(
            f"the plain step covers last-block features and q k^T relations; teacher "
            f"'{teacher.name}' asks for relation_kind={teacher.kind.value} / an earlier feature block"
        )
    if teacher.target_norm is not None or teacher.cfg.interpolate_features:
        raise ValueError(
            f"the plain step covers targets as they are on the student's grid; teacher '{teacher.name}' "
            "asks for normalize or interpolate_features"
        )
    x, rope = teacher.embed(pixels)  # (B, P + L, D), the patches' rotary embedding (Eva) or None
    P, logits, feats = teacher.model.num_prefix_tokens, {}, None
    every = all_indices(x.shape[0], x.shape[1] - P, x.device)
    for i, block in enumerate(teacher.model.blocks):
        x, logits[i] = block_with_logits(block, x, rope=rope_at(rope, every, i))  # (B, N, D), (B, H, N, N)
        if i in select.blocks:
            mask = narrow_mask(x[:, P:], mask, lambda patches, i=i: select(i, patches))
        if i == teacher.feature_block:
            feats = x
    prefix = torch.zeros_like(mask[:, :1]).expand(-1, P).clone()  # (B, P); no class token: patches only
    prefix[:, :1] = teacher.has_cls
    prefix_mask = torch.cat([prefix, mask], dim=1)
    features = None
    if teacher.cfg.features:
        y = teacher.model.norm(feats) if teacher.cfg.final_norm else feats
        y = F.layer_norm(y, y.shape[-1:]) if teacher.cfg.whiten else y
        features = masked_rows(y, prefix_mask)  # (B, 1 + K, D), or (B, K, D) after the summary below
        if not teacher.has_cls:
            features = torch.cat([teacher.summary(feats), features], dim=1)
    relations = {}
    for i in teacher.relation_blocks:
        rel = masked_rows(masked_rows(logits[i], prefix_mask, dim=2), prefix_mask, dim=3)  # (B, H, 1+K, 1+K)
        relations[i] = relation_form(
            rel, teacher.model.blocks[i].attn.scale, teacher.cfg.relation_kind, teacher.cfg.relation_heads
        )
    return TeacherOutput(mask.nonzero()[:, 1].view(mask.shape[0], -1), features, relations), mask


def narrow_mask(patches: torch.Tensor, mask: torch.Tensor, choose) -> torch.Tensor:
    """The patches `choose` picks among those still kept (paper eq. 4), as a new (B, L) mask."""
    B, _, D = patches.shape
    current = patches[mask].view(B, -1, D)  # (B, n, D)
    where = mask.nonzero()[:, 1].view(B, -1)  # (B, n) patch index of each
    chosen = where.gather(1, choose(current))
    return torch.zeros_like(mask).scatter_(1, chosen, True)


def masked_rows(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Boolean-index axis `dim` of x (B, ..., N, ...) with mask (B, N), same count per image."""
    moved = x.movedim(dim, 1)  # (B, N, ...)
    picked = moved[mask].view(x.shape[0], -1, *moved.shape[2:])
    return picked.movedim(1, dim)


def plain_targets(teachers: TeacherSet, pixels: torch.Tensor) -> tuple[Targets, torch.Tensor]:
    """Every teacher, the picker first; returns the targets and the final keep mask (B, L)."""
    B, L = pixels.shape[0], teachers.num_patches
    select = teachers.selector(B, pixels.device)
    mask = torch.zeros(B, L, dtype=torch.bool, device=pixels.device)
    mask.scatter_(1, select.start(B, L, pixels.device), True)
    targets = Targets(torch.empty(0))
    with torch.no_grad():
        for name in teachers.order():
            with record_function(f"teacher {name}"):
                out, mask = plain_teacher(teachers.teachers[name], pixels, mask, select)
            select = KeepGiven(out.keep)  # the others follow the picker's keep set
            targets.keep = out.keep
            targets.add(name, out, teachers.targets)
    return targets, mask


def plain_student(student: Student, pixels: torch.Tensor, mask: torch.Tensor) -> StudentOutput:
    """Student.forward with explicit attention in every block and a boolean keep mask (B, L)."""
    bb = student.backbone
    if student.decoder is not None or student.recon is not None or hasattr(bb, "rel_pos_bias"):
        raise ValueError(
            "the plain step covers section 3's students only: set student.decoder=linear, "
            "student.mask_recon.style=none and student.fd_encoder=false to bench"
        )
    x = embed_tokens(bb, student.normalize(pixels))  # (B, P + L, D)
    P, B, D = bb.num_prefix_tokens, x.shape[0], x.shape[-1]
    x = torch.cat([x[:, :P], x[:, P:][mask].view(B, -1, D)], dim=1)  # (B, P + K, D)
    taps = {}
    for i, block in enumerate(bb.blocks):
        x, lg = block_with_logits(block, x)
        taps[i] = (lg, None, x)
    x = bb.norm(x)
    tokens = torch.cat([x[:, :1], x[:, P:]], dim=1)  # (B, 1 + K, D)
    return StudentOutput(tokens, student.predictions(tokens, taps, P))


def plain_forward_backward(
    student: Student, teachers: TeacherSet, images: torch.Tensor, run
) -> dict[str, torch.Tensor]:
    """uint8 images (B, 3, H, W) -> loss parts; gradients left in the student."""
    with record_function("input"):
        pixels = (images.float() / 255.0).to(run.device)  # fp32 on the host, then moved
    targets, mask = plain_targets(teachers, pixels)
    with record_function("student forward"):
        out = plain_student(student, pixels, mask)
    with record_function("losses"):
        parts = distill_losses(out, targets, run.loss_weights, run.beta)
    with record_function("student backward"):
        parts["loss"].backward()
    return parts
