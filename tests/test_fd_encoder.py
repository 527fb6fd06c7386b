"""FD's asymmetric encoder (paper B.1): layer scale, shared relative position bias, no absolute positions."""

import pytest
import torch
from conftest import TINY, tiny_run_config

from hybrid_distill.build import build_models
from hybrid_distill.config import from_dict
from hybrid_distill.files import load_model
from hybrid_distill.losses import distill_losses
from hybrid_distill.models.attention import block_with_logits
from hybrid_distill.models.fd_encoder import FDAttention, create_student_vit
from hybrid_distill.models.load import create_vit
from hybrid_distill.trainer import Trainer
from hybrid_distill.weights.export import export

GRID = 7  # TINY: 28 px / 4 px


def fd_index_by_hand(gh: int, gw: int) -> torch.Tensor:
    """FD models/vision_transformer.py RelativePositionBias, with_cls_token, written out per token pair."""
    n = (2 * gh - 1) * (2 * gw - 1) + 3
    index = torch.zeros(1 + gh * gw, 1 + gh * gw, dtype=torch.long)
    for i in range(gh * gw):
        for j in range(gh * gw):
            dh, dw = i // gw - j // gw + gh - 1, i % gw - j % gw + gw - 1
            index[1 + i, 1 + j] = dh * (2 * gw - 1) + dw
    index[0, :], index[:, 0], index[0, 0] = n - 3, n - 2, n - 1
    return index


def fd_attention_by_hand(attn, table, x):
    """FD Attention.forward: softmax(q * hd^-0.5 @ k^T + table[index]) @ v, then proj."""
    B, N, D = x.shape
    H = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    bias = table[fd_index_by_hand(GRID, GRID).view(-1)].view(N, N, H).permute(2, 0, 1)
    a = ((q * (D // H) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
    return attn.proj((a @ v).transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("fused", [False, True])
def test_fd_attention_equals_fd_formula_by_hand(fused):
    torch.manual_seed(0)
    model = create_student_vit("vit_tiny_patch16_224", dict(TINY), fd_encoder=True).eval()
    torch.nn.init.normal_(model.rel_pos_bias.relative_position_bias_table)  # FD starts at zero: make it count
    attn = model.blocks[2].attn
    attn.fused_attn = fused
    x = torch.randn(2, 1 + GRID * GRID, TINY["embed_dim"])
    with torch.no_grad():
        expect = fd_attention_by_hand(attn, model.rel_pos_bias.relative_position_bias_table, x)
        assert torch.allclose(attn(x), expect, atol=1e-5)
        # the explicit path of relations / analysis, and the student's bias gathered at kept tokens
        block = model.blocks[2]
        y, _ = block_with_logits(block, x)
        assert torch.allclose(y, block(x), atol=1e-5)
        keep = torch.tensor([[0, 5, 17, 48], [3, 4, 30, 31]])
        rows = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], dim=1)
        full = model.rel_pos_bias()
        gathered = torch.stack([full[0][:, r][:, :, r] for r in rows])
        assert torch.equal(model.rel_pos_bias(keep), gathered)


def test_fd_encoder_is_timm_with_layer_scale_no_positions_and_one_bias_table():
    model = create_student_vit("vit_tiny_patch16_224", dict(TINY), fd_encoder=True)
    plain = create_vit("vit_tiny_patch16_224", **TINY, init_values=0.1, pos_embed="none")
    assert set(model.state_dict()) - set(plain.state_dict()) == {"rel_pos_bias.relative_position_bias_table"}
    assert model.pos_embed is None and torch.all(model.blocks[0].ls1.gamma == 0.1)
    assert all(type(b.attn) is FDAttention and b.attn.shared_bias is model.rel_pos_bias for b in model.blocks)
    assert model.rel_pos_bias.relative_position_bias_table.shape == ((2 * GRID - 1) ** 2 + 3, TINY["num_heads"])


def test_fd_student_with_token_dropping_gets_every_gradient(idx_folder, tmp_path):
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"student.fd_encoder": True}))
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg)
    pixels = torch.rand(2, 3, 28, 28)
    targets = teachers(pixels)
    out = student(pixels, targets.keep)  # CLS + kept tokens: the bias is gathered at them
    distill_losses(out, targets, {"sup": 1.0, "mim": 1.0}, 2.0)["loss"].backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_fd_run_loads_for_eval_and_refuses_layouts_without_the_bias(idx_folder, tmp_path):
    run = Trainer(
        from_dict(tiny_run_config(idx_folder, tmp_path, **{"student.fd_encoder": True, "train.max_steps": 1}))
    ).fit()
    model = load_model(str(run))
    assert isinstance(model.blocks[0].attn, FDAttention)
    assert torch.isfinite(model.eval().forward_features(torch.rand(1, 3, 28, 28))).all()
    with pytest.raises(ValueError, match="relative position bias that timm's VisionTransformer"):
        export(run, "timm", tmp_path / "x.safetensors")
