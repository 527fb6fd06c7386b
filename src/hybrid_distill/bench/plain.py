"""The plain step: the same algorithm written the obvious way, as the baseline of `hybrid-distill bench`.

fp32; attention probabilities materialised in every block of every model (what `output_attentions`
does); the MIM teacher run through all its blocks; full N x N relations, then indexed; kept tokens
as boolean masks. It reuses the optimised step's modules and loss, so both must give the same losses
and gradients (tests/test_bench.py). Shapes: B batch, N tokens, P prefix tokens, L patches, K kept.
"""
import torch
import torch.nn.functional as F

from ..losses import distill_losses
from ..masking import least_redundant
from ..models.attention import block_with_logits
from ..models.student import Student, StudentOutput
from ..models.teacher import Teacher, TeacherOutput
from ..models.tokens import embed_tokens
from ..relations import relation_form
from ..targets import TeacherSet


def plain_teacher(teacher: Teacher, pixels: torch.Tensor, mask: torch.Tensor,
                  select: dict[int, int] | None) -> tuple[TeacherOutput, torch.Tensor]:
    """Every block with explicit attention; `mask` (B, L) bool kept patches, narrowed at `select`."""
    x = teacher.embed(pixels)  # (B, P + L, D)
    P, logits, feats = teacher.model.num_prefix_tokens, {}, None
    for i, block in enumerate(teacher.model.blocks):
        x, logits[i] = block_with_logits(block, x)  # (B, N, D), (B, H, N, N)
        if select and i in select:
            mask = narrow_mask(x[:, P:], mask, select[i])
        if i == teacher.feature_block:
            feats = x
    prefix_mask = torch.cat([torch.ones_like(mask[:, :1]), torch.zeros_like(mask[:, :P - 1]), mask], dim=1)
    features = None
    if teacher.cfg.features:
        y = teacher.model.norm(feats) if teacher.cfg.final_norm else feats
        y = F.layer_norm(y, y.shape[-1:]) if teacher.cfg.whiten else y
        features = masked_rows(y, prefix_mask)  # (B, 1 + K, D)
    relations = {}
    for i, spec in teacher.relation_at.items():
        rel = masked_rows(masked_rows(logits[i], prefix_mask, dim=2), prefix_mask, dim=3)  # (B, H, 1+K, 1+K)
        relations[spec] = relation_form(rel, teacher.model.blocks[i].attn.scale, teacher.cfg.relation_kind,
                                        teacher.cfg.relation_heads)
    return TeacherOutput(mask.nonzero()[:, 1].view(mask.shape[0], -1), features, relations), mask


def narrow_mask(patches: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k least redundant of the patches still kept (paper eq. 4), as a new (B, L) mask."""
    B, _, D = patches.shape
    current = patches[mask].view(B, -1, D)  # (B, n, D)
    where = mask.nonzero()[:, 1].view(B, -1)  # (B, n) patch index of each
    chosen = where.gather(1, least_redundant(current, k))
    return torch.zeros_like(mask).scatter_(1, chosen, True)


def masked_rows(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Boolean-index axis `dim` of x (B, ..., N, ...) with mask (B, N), same count per image."""
    moved = x.movedim(dim, 1)  # (B, N, ...)
    picked = moved[mask].view(x.shape[0], -1, *moved.shape[2:])
    return picked.movedim(1, dim)


def plain_targets(teachers: TeacherSet, pixels: torch.Tensor, clock) -> tuple[dict[str, TeacherOutput], torch.Tensor]:
    """Every teacher, the picker first; returns the targets and the final keep mask (B, L)."""
    B, L = pixels.shape[0], teachers.num_patches
    keep = teachers.keep_for(B, pixels.device)
    mask = torch.ones(B, L, dtype=torch.bool, device=pixels.device)
    if keep is not None:
        mask = torch.zeros_like(mask).scatter_(1, keep, True)
    targets = {}
    with torch.no_grad():
        for name in teachers.order():
            select = teachers.select if keep is None and name == teachers.picker else None
            targets[name], mask = plain_teacher(teachers.teachers[name], pixels, mask, select)
            clock.lap(f"teacher {name}")
    return targets, mask


def plain_student(student: Student, pixels: torch.Tensor, mask: torch.Tensor) -> StudentOutput:
    """Student.forward with explicit attention in every block and a boolean keep mask (B, L)."""
    bb = student.backbone
    x = embed_tokens(bb, student.normalize(pixels))  # (B, P + L, D)
    P, B, D = bb.num_prefix_tokens, x.shape[0], x.shape[-1]
    x = torch.cat([x[:, :P], x[:, P:][mask].view(B, -1, D)], dim=1)  # (B, P + K, D)
    logits = {}
    for i, block in enumerate(bb.blocks):
        x, lg = block_with_logits(block, x)
        if i in student.relation_blocks:
            logits[i] = lg
    x = bb.norm(x)
    tokens = torch.cat([x[:, :1], x[:, P:]], dim=1)  # (B, 1 + K, D)
    return StudentOutput(tokens, {n: head(tokens) for n, head in student.heads.items()},
                         student.relations(logits, P))


def plain_forward_backward(student: Student, teachers: TeacherSet, images: torch.Tensor, run,
                           clock) -> dict[str, torch.Tensor]:
    """uint8 images (B, 3, H, W) -> loss parts; gradients left in the student. `clock.lap(phase)`."""
    pixels = (images.float() / 255.0).to(run.device)  # fp32 on the host, then moved
    clock.lap("input")
    targets, mask = plain_targets(teachers, pixels, clock)
    out = plain_student(student, pixels, mask)
    clock.lap("student forward")
    parts = distill_losses(out, targets, run.loss_weights, run.beta)
    clock.lap("losses")
    parts["loss"].backward()
    clock.lap("student backward")
    return parts
