"""The student: a plain timm VisionTransformer run on CLS + the kept patch tokens.

Its state_dict is the timm model's own (`backbone`), so exported weights need no renaming table;
the feature heads Linear(D_s -> D_t), the optional decoder and the mask-reconstruction token live
beside it and are saved apart (FD, dBOT): they are trained, never exported. A target from an
earlier teacher block is matched at the student block `matching.py` names, through its own head.
"""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config_schema import MaskStyle
from ..masking import all_indices, gather_tokens
from ..relations import student_target
from ..targets import ByTarget, Target
from .attention import block_with_parts, check_block, choose_attention
from .decoder import Decoder
from .mask_recon import MaskRecon, visible_indices
from .tokens import Normalize, check_class_token, cls_and_patches, embed_tokens, keep_with_prefix, patches_only


@dataclass
class StudentOutput(ByTarget):
    tokens: torch.Tensor  # (B, 1 + K, D_s) last block, final norm, CLS + kept (registers dropped)
    values: dict[Target, torch.Tensor] = field(default_factory=dict)  # each target's prediction, as Targets
    loss_mask: torch.Tensor | None = None  # (B, 1 + K) bool: the tokens the feature loss reads (mask reconstruction)


class Student(nn.Module):
    """`targets`: the list it predicts (`matching.match_targets`); `fused_attention`: SDPA in the blocks
    whose logits are not read (student_fused_attention)."""

    def __init__(
        self,
        backbone: nn.Module,
        mean,
        std,
        targets: list[Target],
        activation_checkpointing: bool = False,
        fused_attention: bool = True,
        decoder: Decoder | None = None,
        recon: MaskRecon | None = None,
        linear_heads: bool = True,
    ):
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        for block in backbone.blocks:
            check_block(block)
        check_class_token(backbone, "the student")
        self.backbone = backbone
        choose_attention(backbone, fused_attention)
        self.normalize = Normalize(mean, std)
        width = backbone.embed_dim
        head = (lambda dim: nn.Linear(width, dim)) if linear_heads else (lambda dim: nn.Identity())
        self.heads = nn.ModuleDict({t.head_name: head(t.head) for t in targets if t.head is not None})
        self.decoder, self.recon = decoder, recon  # dBOT's decoder blocks, mask reconstruction; None when off
        self.last = len(backbone.blocks) - 1
        # features first, then block targets: the order of the loss parts
        self.targets = sorted(targets, key=lambda t: not t.is_features)
        # blocks tapped whole (logits, per-head outputs, output tokens), and those whose output alone a
        # feature head reads (features of an earlier teacher block)
        self.relation_blocks = {t.student_block for t in self.targets if not t.is_features}
        self.output_blocks = {t.student_block for t in self.targets if t.is_features and t.student_block != self.last}

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> StudentOutput:
        """pixels (B, 3, H, W) in [0, 1]; keep (B, K) patch indices, None for all."""
        bb = self.backbone
        pixels = self.normalize(pixels)
        if keep is None:
            grid = bb.patch_embed.grid_size
            keep = all_indices(pixels.shape[0], grid[0] * grid[1], pixels.device)
        mask = self.recon.draw(pixels.shape[0], pixels.device) if self.recon is not None else None  # (B, L)
        x, seen = self.encoder_input(pixels, keep, mask)  # (B, P + K', D) at the patches seen (B, K')
        x, taps = self.encode(x, seen)
        P = bb.num_prefix_tokens
        tokens = cls_and_patches(x, P)  # (B, 1 + K', D) CLS + kept (dBOT: visible) patches
        decoded = tokens
        if self.decoder is not None:  # dBOT: mask tokens fill the masked patches; else the same tokens
            decoded = self.decoder(tokens, seen, mask if self.style is MaskStyle.dbot else None)
        return StudentOutput(tokens, self.predictions(decoded, taps, P), self.loss_mask(mask, keep))

    def predictions(self, decoded: torch.Tensor, taps: dict, P: int) -> dict[Target, torch.Tensor]:
        """Each target's prediction: features from the last block's (decoded) tokens or the matched
        block's output, through their head; block targets from the matched block's tap (relations.py)."""
        return {t: self.predict(t, decoded, taps, P) for t in self.targets}

    def predict(self, t: Target, decoded: torch.Tensor, taps: dict, P: int) -> torch.Tensor:
        if t.is_features:
            tokens = decoded if t.student_block == self.last else cls_and_patches(taps[t.student_block][2], P)
            return self.heads[t.head_name](tokens)
        head = self.heads[t.head_name] if t.head is not None else None
        attn = self.backbone.blocks[t.student_block].attn
        read = cls_and_patches if t.cls else patches_only  # a teacher without a class token: patches only
        return student_target(t.kind, t.heads, attn, taps[t.student_block], lambda x, dim: read(x, P, dim), head)

    @property
    def style(self) -> MaskStyle:
        return self.recon.style if self.recon is not None else MaskStyle.none

    def encoder_input(self, pixels: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor | None):
        """The encoder's tokens and their patch indices: the kept patches (simmim: the masked ones as the
        mask token), or dbot's visible patches only."""
        bb = self.backbone
        x = self.recon.embed(bb, pixels, mask) if self.style is MaskStyle.simmim else embed_tokens(bb, pixels)
        seen = visible_indices(mask) if self.style is MaskStyle.dbot else keep
        return keep_with_prefix(x, seen, bb.num_prefix_tokens), seen

    def encode(self, x: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The blocks and final norm on tokens at patches `seen`; at the blocks targets read, their taps
        (logits, per-head outputs, output tokens)."""
        bb = self.backbone
        bias = bb.rel_pos_bias(seen) if hasattr(bb, "rel_pos_bias") else None  # FD's encoder, at these tokens
        taps = {}
        for i, block in enumerate(bb.blocks):
            if i in self.relation_blocks:
                x, logits, heads = self.run_block(block_with_parts, block, x, bias)
                taps[i] = (logits, heads, x)
            else:
                x = self.run_block(nn.Module.__call__, block, x, bias)
                if i in self.output_blocks:
                    taps[i] = (None, None, x)
        return bb.norm(x), taps

    def loss_mask(self, mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        """(B, 1 + K) bool over the predicted tokens: the masked patches, and CLS for dbot (its loss
        counts CLS as masked, dBOT models_mae.py `forward_encoder`); None without mask reconstruction."""
        if mask is None:
            return None
        cls = mask.new_full((mask.shape[0], 1), self.style is MaskStyle.dbot)
        return torch.cat([cls, gather_tokens(mask.unsqueeze(-1), keep).squeeze(-1)], dim=1)

    def run_block(self, fn, block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None):
        """fn(block, x[, bias]), with activation checkpointing (recompute in backward) when set, for large
        students; `bias` is FD's relative position bias (an additive attention mask) or None."""
        args = (block, x) if bias is None else (block, x, bias)  # timm's fused path stays mask-free without FD
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward_all(self, pixels: torch.Tensor) -> StudentOutput:
        """Every token kept: equals timm's forward_features on CLS + patches."""
        grid = self.backbone.patch_embed.grid_size
        return self.forward(pixels, all_indices(pixels.shape[0], grid[0] * grid[1], pixels.device))
