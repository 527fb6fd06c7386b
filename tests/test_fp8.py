"""FP8 teachers (train.teacher_precision=fp8): the rowwise e4m3 product against bf16, within e4m3's
rounding (3 mantissa bits: about 2^-4 relative per element); refusals in one line."""

import pytest
import torch
from conftest import tiny_run_config
from torch import nn

from hybrid_distill.bench.fp8_check import targets_at, teacher_sets
from hybrid_distill.build import build_models
from hybrid_distill.config import ConfigError, TeacherPrecision, from_dict
from hybrid_distill.models.fp8 import E4M3_MAX, Float8Linear, fp8_unsupported, quantize_rows, to_float8
from hybrid_distill.models.precision import resolve_teacher_precision

CPU = torch.device("cpu")
needs_fp8 = pytest.mark.skipif(fp8_unsupported(CPU) is not None, reason="no CPU _scaled_mm in this torch build")


def relative_error(a, b) -> float:
    return float((a.detach().float() - b.float()).norm() / b.float().norm())


def test_rows_quantise_to_their_own_scale():
    x = torch.tensor([[1.0, -2.0, 0.5] + [0.0] * 13, [100.0, 0.0, -50.0] + [0.0] * 13])
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 1)
    assert torch.equal(scale[:, 0], torch.tensor([2.0, 100.0]) / E4M3_MAX)  # each row's absolute maximum -> 448
    assert torch.allclose(q.float() * scale, x, rtol=2**-3)  # e4m3: 3 mantissa bits


@needs_fp8
def test_float8_linear_matches_bf16_within_e4m3_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(5, 7, 64, dtype=torch.bfloat16)  # 35 rows: padded to 48 inside
    fp8 = Float8Linear(linear)
    with torch.no_grad():
        out, ref = fp8(x), linear(x)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert relative_error(out, ref) < 0.06  # measured 0.037 (ViT-B's MLP shape, random data)
    assert torch.allclose(fp8.weight.float(), linear.weight.float(), rtol=2**-3, atol=1e-6)


@needs_fp8
def test_fp8_teachers_give_targets_near_bf16_ones():
    cfg = from_dict(tiny_run_config("/unused", "/unused", **{"train.amp": "bf16"}))
    sets = teacher_sets(cfg, CPU)  # built as the trainer builds them, from the same seed
    bf16, fp8 = sets["bf16"], sets["fp8"]
    assert fp8.precision is TeacherPrecision.fp8 and bf16.precision is TeacherPrecision.bf16
    assert all(p.dtype == torch.bfloat16 for p in fp8.parameters() if p.dtype != torch.float8_e4m3fn)
    linears = [m for m in fp8.modules() if isinstance(m, Float8Linear)]
    assert len(linears) == 2 * 6 * 4  # qkv, proj, fc1, fc2 of every block of both teachers
    pixels = torch.rand(4, 3, 28, 28)
    ref = bf16(pixels)
    out = targets_at(fp8, pixels, ref.keep)  # at the same kept tokens
    assert relative_error(out["sup"].features, ref.features["sup"]) < 0.1
    for block, rel in ref.relations["mim"].items():
        assert relative_error(out["mim"].relations[block], rel) < 0.15
        assert out["mim"].relations[block].dtype == torch.float32  # targets stay fp32


def test_auto_precision_is_the_trainers_old_choice():
    assert resolve_teacher_precision("auto", torch.bfloat16) is TeacherPrecision.bf16
    assert resolve_teacher_precision("auto", None) is TeacherPrecision.fp32
    assert resolve_teacher_precision("auto", torch.float16) is TeacherPrecision.fp32


def test_fp8_is_refused_in_one_line_without_bf16_or_a_capable_device():
    cfg = from_dict(tiny_run_config("/unused", "/unused", **{"train.teacher_precision": "fp8"}))
    with pytest.raises(ConfigError, match="train.amp=bf16") as err:
        build_models(cfg)  # fp8 teachers without bf16 autocast
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="compute capability 8.9") as err:
        to_float8(nn.Linear(16, 16), torch.device("meta"))
    assert "\n" not in str(err.value)


def test_only_linears_of_multiple_of_16_sizes_are_replaced():
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 10))
    to_float8(model, CPU, check=False)
    assert isinstance(model[0], Float8Linear) and isinstance(model[2], nn.Linear)
