"""Mask feature reconstruction (paper 2.4, B.2): SimMIM-style and dBOT-style students."""

import math

import pytest
import torch
from conftest import TINY
from test_decoders import feature_config

from hybrid_distill.build import build_models
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.losses import distill_losses, masked_smooth_l1
from hybrid_distill.models.mask_recon import cell_mask, visible_indices

L = 49  # TINY: 28 px / 4 px patches = 7 x 7


def recon_config(idx_folder, tmp_path, style, **extra):
    extra = {"student.mask_recon.style": style, "student.mask_recon.patch": 4, **extra}
    if style == "dbot":
        extra.setdefault("student.decoder", "blocks")
        extra.setdefault("student.decoder_depth", 1)
    return from_dict(feature_config(idx_folder, tmp_path, **extra))


def step(cfg):
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg)
    pixels = torch.rand(2, 3, 28, 28)
    targets = teachers(pixels)
    return student, targets, student(pixels, targets.keep)


def test_masked_smooth_l1_by_hand():
    pred = torch.tensor([[[0.0], [1.0], [5.0]]])
    target = torch.tensor([[[0.5], [3.0], [0.0]]])
    mask = torch.tensor([[True, False, True]])
    # read tokens 0 and 2: 0.5 * 0.5^2 / 2 = 0.0625 and 5 - 1 = 4; token 1 (|d| = 2) is not read
    assert masked_smooth_l1(pred, target, mask, 2.0).item() == pytest.approx((0.0625 + 4.0) / 2)


@pytest.mark.parametrize("style", ["simmim", "dbot"])
def test_loss_ignores_visible_targets_and_reads_masked_ones(idx_folder, tmp_path, style):
    student, targets, out = step(recon_config(idx_folder, tmp_path, style))
    mask = out.loss_mask  # (B, 1 + L)
    assert mask.shape == (2, 1 + L) and mask[:, 0].eq(style == "dbot").all()
    assert mask[:, 1:].sum(dim=1).eq(math.ceil(L * (0.6 if style == "simmim" else 0.75))).all()
    base = distill_losses(out, targets, {"sup": 1.0}, 2.0)["sup/mask_feat"]
    feats = targets.features["sup"]
    sup = next(t for t in targets.values if t.is_features)

    def loss_with(changed):
        targets.values[sup] = changed
        return distill_losses(out, targets, {"sup": 1.0}, 2.0)["sup/mask_feat"]

    assert torch.equal(loss_with(torch.where(mask[..., None], feats, feats + 10.0)), base)  # visible changed
    assert not torch.equal(loss_with(torch.where(mask[..., None], feats + 10.0, feats)), base)  # masked changed


@pytest.mark.parametrize("style", ["simmim", "dbot"])
def test_every_parameter_gets_a_gradient(idx_folder, tmp_path, style):
    student, targets, out = step(recon_config(idx_folder, tmp_path, style))
    distill_losses(out, targets, {"sup": 1.0}, 2.0)["loss"].backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    token = student.recon.mask_token if style == "simmim" else student.decoder.mask_token
    assert token.grad.abs().sum() > 0


def test_simmim_encoder_sees_every_token_dbot_encoder_the_visible_ones(idx_folder, tmp_path):
    _, _, simmim = step(recon_config(idx_folder, tmp_path, "simmim"))
    _, _, dbot = step(recon_config(idx_folder, tmp_path, "dbot"))
    assert simmim.tokens.shape == (2, 1 + L, TINY["embed_dim"])
    visible = L - math.ceil(L * 0.75)  # dBOT's default ratio
    assert dbot.tokens.shape == (2, 1 + visible, TINY["embed_dim"])  # the encoder ran on CLS + visible
    assert dbot.features["sup"].shape == (2, 1 + L, TINY["embed_dim"])  # the decoder predicts every token


def test_simmim_input_holds_the_mask_token_at_masked_patches_only(idx_folder, tmp_path):
    student, _, _ = step(recon_config(idx_folder, tmp_path, "simmim"))
    bb, pixels = student.backbone, torch.rand(2, 3, 28, 28)
    mask = student.recon.draw(2, "cpu")
    x = student.recon.embed(bb, pixels, mask)[:, 1:] - bb.pos_embed[:, 1:]  # (B, L, D) before positions
    assert torch.allclose(x[mask], student.recon.mask_token[0].expand(int(mask.sum()), -1), atol=1e-6)
    assert torch.allclose(x[~mask], bb.patch_embed(pixels)[~mask], atol=1e-6)


def test_cell_mask_masks_whole_cells_of_the_given_count():
    torch.manual_seed(0)
    mask = cell_mask(3, (8, 8), 2, 0.6)  # 4 x 4 cells of 2 x 2 patches, ceil(16 * 0.6) = 10 masked
    cells = mask.view(3, 4, 2, 4, 2)
    assert (cells.all(dim=(2, 4)) == cells.any(dim=(2, 4))).all()  # every cell all-masked or all-visible
    assert mask.sum(dim=1).eq(10 * 4).all()
    kept = visible_indices(mask)
    assert kept.shape == (3, 64 - 40) and (~mask).gather(1, kept).all() and (kept.diff(dim=1) > 0).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"student.mask_recon.style": "dbot"}, "set student.decoder=blocks"),
        (
            {"student.mask_recon.style": "simmim", "student.mask_recon.patch": 8},
            "must be a multiple of the student's 4 px",
        ),
        ({"student.mask_recon.style": "simmim", "student.mask_recon.ratio": 1.0}, "must be in (0, 1)"),
    ],
)
def test_bad_mask_settings_fail_in_one_line(idx_folder, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_models(from_dict(feature_config(idx_folder, tmp_path, **extra)))


def test_relations_and_token_selection_are_refused(idx_folder, tmp_path):
    from conftest import tiny_run_config

    values = tiny_run_config(idx_folder, tmp_path, **{"student.mask_recon.style": "simmim"})
    with pytest.raises(ConfigError, match="set masking.teacher=null"):
        from_dict(values)
    values["masking"] = {"teacher": None}
    with pytest.raises(ConfigError, match="teachers.mim gives relations"):
        from_dict(values)
