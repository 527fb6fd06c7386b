"""A frozen teacher: a timm ViT (a VisionTransformer or the Eva family: EVA-02, DINOv3, PE) that owns its
normalisation, stays in eval mode and has no gradients.

It sees the full image (paper eq. 1: T(x) ⊙ M) and returns its targets at the kept tokens only:
features at one block, and at its relation blocks R = q k^T, MSA or the block's output (eq. 2,
relations.py). The teacher that picks tokens (the MIM
teacher) narrows the kept set after the selection blocks (eq. 4) through its selector.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config_schema import ConfigError, RelationKind, TargetNorm, TeacherConfig, TeacherPrecision
from ..masking import all_indices, gather_tokens, positions_within
from ..relations import form, resolve_block, teacher_target
from .attention import check_block, choose_attention, run_block
from .load import mean_std
from .phis import TargetNormalizer
from .precision import apply_precision
from .tokens import (
    Normalize,
    cls_and_patches,
    embed_with_rope,
    grid_size,
    has_class_token,
    image_size,
    keep_with_prefix,
    patches_only,
    rope_at,
)


@dataclass
class TeacherOutput:
    keep: torch.Tensor  # (B, K) kept patch indices
    features: torch.Tensor | None = None  # (B, 1 + K, D_t)
    # block index -> (B, H, 1 + K, 1 + K) relations, (B, H, 1 + K, hd) MSA or (B, 1 + K, D_t) block features
    relations: dict[int, torch.Tensor] = field(default_factory=dict)


def build_teacher_model(name: str, cfg: TeacherConfig, student_grid=None) -> tuple[nn.Module, dict]:
    """The timm backbone and a manifest record (file, sha256, source, licence). With match_grid, a
    teacher of another patch size or resolution is built at the input size that gives the student's
    grid, its position embeddings interpolated by timm (e.g. a /14 teacher at 196 px for /16 at 224)."""
    from ..weights import build_teacher_backbone
    from ..weights.grid import grid_model_kwargs

    kwargs = dict(cfg.model_kwargs)
    if cfg.match_grid and student_grid is not None:
        kwargs = grid_model_kwargs(cfg.arch, tuple(student_grid), kwargs)
    file = None if cfg.weights in ("pretrained", "random") else cfg.weights
    try:
        return build_teacher_backbone(
            cfg.arch, file=file, pretrained=cfg.weights == "pretrained", model_kwargs=kwargs, resample=cfg.resample
        )
    except ValueError as err:  # a file that does not fit the model asked for: bad input, one line (exit 2)
        where = "" if file is None or str(file) in str(err) else f"{file}: "
        raise ConfigError(f"teachers.{name}: {where}{err}") from None


class Teacher(nn.Module):
    """Frozen ViT teacher; `.train()` never takes it out of eval mode. SDPA in every block (relations are
    read from q and k apart, so every block may use it). `precision` (resolved,
    models/precision.py) is applied on `device` (None: where the model is) when it is built."""

    def __init__(
        self,
        name: str,
        cfg: TeacherConfig,
        model: nn.Module,
        student_grid: tuple[int, int],
        precision: TeacherPrecision = TeacherPrecision.fp32,
        device: torch.device | None = None,
    ):
        super().__init__()
        for block in model.blocks:
            check_block(block, eva=True)
        self.has_cls = has_class_token(model)
        self.student_grid = tuple(student_grid)
        if grid_size(model) != self.student_grid and not cfg.interpolate_features:
            patch = model.patch_embed.patch_size[0]
            raise ConfigError(
                f"teacher '{name}' has a {grid_size(model)} token grid but the student has {tuple(student_grid)}; "
                f"set teachers.{name}.match_grid=true, teachers.{name}.interpolate_features=true or "
                f"teachers.{name}.model_kwargs.img_size={student_grid[0] * patch}"
            )
        device = device if device is not None else next(model.parameters()).device
        self.precision = TeacherPrecision(precision)
        self.name, self.cfg = name, cfg
        self.model = apply_precision(model.requires_grad_(False).to(device), self.precision, device)
        choose_attention(model, True)
        self.normalize = Normalize(*mean_std(model)).to(device)  # its mean / std buffers beside the model
        self.target_norm = self.build_target_norm(TargetNorm(cfg.normalize), model.embed_dim, device)
        depth = len(model.blocks)
        self.feature_block = (
            resolve_block(cfg.feature_block, depth, f"teachers.{name}.feature_block") if cfg.features else None
        )
        if not self.has_cls and cfg.features and self.feature_block != depth - 1:
            raise ConfigError(
                f"teacher '{name}' ({cfg.arch}) has no class token: its summary target is its pooled output, "
                f"which follows the last block; set teachers.{name}.feature_block=-1"
            )
        self.relation_blocks = sorted(
            {resolve_block(b, depth, f"teachers.{name}.relation_blocks") for b in cfg.relation_blocks}
        )
        self.kind = RelationKind(cfg.relation_kind)
        # blocks to run: through the feature block; up to (not through) a relation block whose q and k
        # come from its input, through one whose output is the target
        through = 0 if form(self.kind).reads_input else 1
        self.blocks_needed = max(
            ([self.feature_block + 1] if cfg.features else []) + [b + through for b in self.relation_blocks]
        )
        self.eval()

    def build_target_norm(self, norm: TargetNorm, dim: int, device) -> TargetNormalizer | None:
        """PHI-S or standardisation of the feature target (models/phis.py); None: the target as it is."""
        if norm is TargetNorm.none:
            return None
        try:
            return TargetNormalizer(norm.value, dim).to(device)
        except ValueError as err:  # a width with no Hadamard matrix
            raise ConfigError(f"teachers.{self.name}.normalize={norm.value}: {err}") from None

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return self.model.blocks[0].attn.num_heads

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels in [0, 1] at the student's size -> (B, P + L, D), resized to this teacher's input size, and
        the model's rotary embedding of its L patches (None without one; `tokens.embed_with_rope`)."""
        size = image_size(self.model)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        dtype = self.model.patch_embed.proj.weight.dtype  # bf16 for bf16 and fp8 teachers
        return embed_with_rope(self.model, self.normalize(pixels).to(dtype))

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, select) -> TeacherOutput:
        """MAE's forward_encoder order: normalise and embed, run the blocks up to the last one needed,
        narrow the kept patches where the selector acts (masking.py), read the targets at CLS + kept. The
        rotary embedding (Eva family) follows the patch rows still there, as timm's patch dropout gathers it."""
        x, rope = self.embed(pixels)  # (B, P + L, D)
        P = self.model.num_prefix_tokens
        B, L = x.shape[0], x.shape[1] - P
        keep = select.start(B, L, x.device)  # (B, K) kept patch indices
        rows = all_indices(B, L, x.device)  # (B, n) the patch index of each patch row of x
        normed, features = {}, None
        stop = max([self.blocks_needed] + [b + 1 for b in select.blocks])  # blocks to run
        from_input = form(self.kind).reads_input
        for i, block in enumerate(self.model.blocks):
            if i in self.relation_blocks and from_input:
                normed[i] = (block.norm1(x), rows)  # the block's q and k are read from its normed input
            if i == stop:
                break
            x = run_block(block, x, rope_at(rope, rows, i))  # (B, P + n, D)
            if i in select.blocks:
                chosen = select(i, gather_tokens(x[:, P:], positions_within(rows, keep)))  # (B, k) within keep
                keep = keep.gather(1, chosen)
                if select.prune:
                    x, rows = keep_with_prefix(x, positions_within(rows, keep), P), keep
            if i == self.feature_block:
                features = (x, rows)
            if i in self.relation_blocks and not from_input:
                normed[i] = (x, rows)  # T^i: the block's output
        return TeacherOutput(
            keep, self.feature_target(features, keep, self.feature_block), self.relation_targets(normed, keep, rope)
        )

    def read(self, x: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, P + n, D) with patch rows `rows` -> (B, 1 + K, D) at CLS + the kept patches; (B, K, D) at the
        kept patches for a teacher without a class token."""
        P = self.model.num_prefix_tokens
        x = keep_with_prefix(x, positions_within(rows, keep), P)
        return cls_and_patches(x, P) if self.has_cls else patches_only(x, P)

    def feature_target(self, features, keep: torch.Tensor, block: int) -> torch.Tensor | None:
        """Block output at CLS + kept -> final norm -> per-token LayerNorm without affine (FD), or PHI-S /
        standardisation across tokens (normalize). Without a class token, the CLS slot holds the summary:
        the model's pooled output (e.g. SigLIP's attention-pool head), which the student's CLS matches
        through the teacher's head, as AM-RADIO matches each teacher's summary token."""
        if features is None:
            return None
        x, rows = features
        summary = None if self.has_cls else self.summary(x)  # (B, 1, D) from the model's own tokens
        if grid_size(self.model) != self.student_grid:
            x, rows = self.on_student_grid(x), all_indices(x.shape[0], self.num_student_patches, x.device)
        tokens = self.finish_tokens(self.read(x, rows, keep), block)  # (B, 1 + K, D) or (B, K, D)
        if summary is not None:
            tokens = torch.cat([summary, tokens], dim=1)
        return tokens if self.target_norm is None else self.target_norm(tokens)

    @property
    def num_student_patches(self) -> int:
        return self.student_grid[0] * self.student_grid[1]

    def on_student_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + L, D) on the teacher's grid -> (B, P + L_s, D) on the student's (interpolate_features): the
        patch map resized bilinearly (antialiased when it shrinks), prefix tokens as they are. The block's
        output is resized, then finished per token (final norm, whitening) as on the teacher's own grid."""
        P = self.model.num_prefix_tokens
        B, _, D = x.shape
        grid = grid_size(self.model)
        patches = x[:, P:].transpose(1, 2).reshape(B, D, *grid)  # (B, D, H_t, W_t)
        resized = F.interpolate(patches.float(), size=self.student_grid, mode="bilinear", antialias=True)
        return torch.cat([x[:, :P], resized.flatten(2).transpose(1, 2).to(x.dtype)], dim=1)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, P + n, D) -> the model's pooled output (B, 1, D) as timm computes it
        (forward_features' final norm, then forward_head's pool and fc_norm), whitened like the tokens."""
        pooled = self.model.forward_head(self.model.norm(x), pre_logits=True).float().unsqueeze(1)
        return F.layer_norm(pooled, pooled.shape[-1:]) if self.cfg.whiten else pooled

    def finish_tokens(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The final norm belongs to the last block's output (FD reads it there); an earlier block's
        target is its output, as eq. 2 writes T^i. fp32 whatever the teacher's dtype."""
        if self.cfg.final_norm and block == self.depth - 1:
            x = self.model.norm(x)
        x = x.float()
        return F.layer_norm(x, x.shape[-1:]) if self.cfg.whiten else x

    def relation_targets(self, normed: dict, keep: torch.Tensor, rope) -> dict[int, torch.Tensor]:
        """The target of each relation block (config relation_kind, relations.py), at CLS + kept tokens."""
        out = {}
        for i, (x, rows) in normed.items():
            target = teacher_target(
                self.kind,
                self.cfg.relation_heads,
                self.model.blocks[i].attn,
                x,
                lambda t, rows=rows: self.read(t, rows, keep),
                rope_at(rope, rows, i),
                rope_at(rope, keep, i),
            )
            out[i] = self.finish_tokens(target, i) if form(self.kind).tokens else target
        return out
