"""Student decoders (paper 2.2-2.3): none / linear / k blocks; trained, never exported; analysed on demand."""

import json
import math

import pytest
import torch
from conftest import TINY, tiny_run_config

from hybrid_distill.analysis.command import main as analyze
from hybrid_distill.build import build_models
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.files import load_model
from hybrid_distill.losses import distill_losses
from hybrid_distill.models.decoder import sincos_2d
from hybrid_distill.models.load import create_vit
from hybrid_distill.trainer import Trainer
from hybrid_distill.weights.export import export


def feature_config(idx_folder, out, **extra):
    """One feature teacher (T_c), every token kept: the section-2 setting."""
    values = tiny_run_config(idx_folder, out, **extra)
    del values["teachers"]["mim"]
    values["masking"] = {"teacher": None, "strategy": "none"}
    return values


def one_step_grads(cfg):
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg)
    pixels = torch.rand(2, 3, 28, 28)
    targets = teachers(pixels)
    out = student(pixels, targets.keep)
    parts = distill_losses(out, targets, {"sup": 1.0}, 2.0)
    parts["loss"].backward()
    return student, out, parts


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_every_decoder_depth_gets_gradients(idx_folder, tmp_path, depth):
    cfg = from_dict(
        feature_config(idx_folder, tmp_path, **{"student.decoder": "blocks", "student.decoder_depth": depth})
    )
    student, out, parts = one_step_grads(cfg)
    assert len(student.decoder.blocks) == depth and student.decoder.mask_token is None
    assert out.features["sup"].shape == (2, 1 + 49, TINY["embed_dim"]) and torch.isfinite(parts["loss"])
    missing = [n for n, p in student.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for p in student.decoder.parameters())


def test_decoder_none_is_identity_and_refuses_other_widths(idx_folder, tmp_path):
    cfg = from_dict(feature_config(idx_folder, tmp_path, **{"student.decoder": "none"}))
    student, out, _ = one_step_grads(cfg)
    assert not list(student.heads.parameters()) and torch.equal(out.features["sup"], out.tokens)
    wide = feature_config(idx_folder, tmp_path, **{"student.decoder": "none"})
    wide["teachers"]["sup"]["model_kwargs"]["embed_dim"] = 96
    with pytest.raises(ConfigError, match="decoder=none needs teacher 'sup' width 96 to equal the student's 48"):
        build_models(from_dict(wide))


def test_decoder_positions_are_mae_sincos_by_hand():
    pos = sincos_2d(8, (2, 3))  # (1, 1 + 6, 8): per axis dim 4, frequencies 1 and 1/100
    assert pos.shape == (1, 7, 8) and not pos[0, 0].any()  # CLS row is zero
    row, col = 1, 2  # patch 5 in row-major order
    expect = [
        math.sin(col),
        math.sin(col / 100),
        math.cos(col),
        math.cos(col / 100),
        math.sin(row),
        math.sin(row / 100),
        math.cos(row),
        math.cos(row / 100),
    ]
    assert torch.allclose(pos[0, 1 + row * 3 + col], torch.tensor(expect), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_decoder_run_resumes_exports_the_encoder_only_and_analyses_the_decoder(idx_folder, tmp_path, depth):
    values = feature_config(
        idx_folder, tmp_path, **{"student.decoder": "blocks", "student.decoder_depth": depth, "train.max_steps": 1}
    )
    trainer = Trainer(from_dict(values))
    run = trainer.fit()
    decoder_state = {k: v.clone() for k, v in trainer.student.decoder.state_dict().items()}
    values["train"]["max_steps"] = 2  # resume restores the decoder from the checkpoint's state_dict
    resumed = Trainer(from_dict(values), resume="auto")
    assert all(torch.equal(decoder_state[k], v) for k, v in resumed.student.decoder.state_dict().items())
    resumed.fit()

    plain = create_vit("vit_tiny_patch16_224", **TINY)
    assert load_model(str(run)).state_dict().keys() == plain.state_dict().keys()  # eval / analyze: encoder only
    result = export(run, "timm", tmp_path / "student.safetensors", verify=True)
    from safetensors.torch import load_file

    assert load_file(result["files"][0]).keys() == plain.state_dict().keys()

    out = tmp_path / "analysis"
    assert (
        analyze(
            [
                str(run),
                "--decoder",
                "--data",
                f"fashion_mnist:{idx_folder}",
                "--num-images",
                "4",
                "--map-images",
                "1",
                "--layers",
                "-1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "analysis.json").read_text())["models"]["tiny"]
    assert (report["depth"], report["encoder_depth"]) == (TINY["depth"] + depth, TINY["depth"])
    assert len(report["distance"]["per_layer"]) == len(report["nmi"]["per_layer"]) == TINY["depth"] + depth
    assert report["query_maps"]["block_indices"] == [TINY["depth"] + depth - 1]  # the last decoder block


def test_analyze_decoder_of_a_run_without_one_fails_in_one_line(idx_folder, tmp_path, capsys):
    run = Trainer(from_dict(feature_config(idx_folder, tmp_path, **{"train.max_steps": 1}))).fit()
    capsys.readouterr()
    assert (
        analyze(
            [
                str(run),
                "--decoder",
                "--data",
                f"fashion_mnist:{idx_folder}",
                "--num-images",
                "2",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no decoder blocks (student.decoder=linear)" in err


def test_the_plain_bench_step_refuses_a_decoder_student(idx_folder, tmp_path):
    from hybrid_distill.bench.plain import plain_student

    cfg = from_dict(feature_config(idx_folder, tmp_path, **{"student.decoder": "blocks", "student.decoder_depth": 1}))
    student, _, _ = build_models(cfg)
    with pytest.raises(ValueError, match="plain step covers section 3's students only"):
        plain_student(student, torch.rand(1, 3, 28, 28), torch.ones(1, 49, dtype=torch.bool))
