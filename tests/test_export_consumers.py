"""Exports load where users load them: timm's own loaders, and the OpenMMLab ViT classes."""

import json
import sys
import types

import pytest
import timm
import torch
from conftest import TINY, tiny_vit

from hybrid_distill.files import save_model_file
from hybrid_distill.weights import export

MEAN, STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


def student_file(tmp_path):
    model = tiny_vit(seed=3)
    for p in model.parameters():  # norms and biases random too, so a dropped tensor shows
        torch.nn.init.normal_(p, std=0.2)
    return save_model_file(model, "vit_tiny_patch16_224", TINY, tmp_path / "student.pt", MEAN, STD), model.eval()


def features(model, seed=0):
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval().forward_features(x)


def test_timm_folder_export_loads_with_local_dir(tmp_path):
    path, student = student_file(tmp_path)
    result = export(path, "timm", tmp_path / "exported", verify=True)
    assert result["verified_with"] == "timm"
    model = timm.create_model(f"local-dir:{tmp_path / 'exported'}", pretrained=True)
    assert torch.equal(features(model), features(student))
    assert model.num_classes == 0 and isinstance(model.head, torch.nn.Identity)  # no classifier
    assert tuple(model.pretrained_cfg["mean"]) == MEAN and tuple(model.pretrained_cfg["std"]) == STD
    assert tuple(timm.data.resolve_data_config(model=model)["mean"]) == MEAN  # what timm's transforms will use


@pytest.mark.parametrize("name", ["s.safetensors", "s.pth"])
def test_timm_single_file_loads_with_the_documented_call(tmp_path, name):
    path, student = student_file(tmp_path)
    export(path, "timm", tmp_path / name)
    if name.endswith(".pth"):  # a torch file under .pth, never safetensors bytes
        assert set(torch.load(tmp_path / name, weights_only=True)) == set(student.state_dict())
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(file=str(tmp_path / name)),
        **TINY,
    )
    assert torch.equal(features(model), features(student))
    model.load_state_dict(student.state_dict(), strict=True)  # the same keys: nothing left at init


def test_export_suffix_mismatch_is_refused_in_one_line(tmp_path, capsys):
    path, _ = student_file(tmp_path)
    from hybrid_distill.cli import main

    assert main(["export", str(path), "--format", "mmseg", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "writes FILE.pth" in capsys.readouterr().err
    assert main(["export", str(path), "--format", "timm", "--out", str(tmp_path / "x.ckpt")]) == 2
    assert not list(tmp_path.glob("x.*"))  # refused before anything was written


def test_mm_export_lists_the_settings_mmseg_needs(tmp_path):
    path, _ = student_file(tmp_path)
    settings = export(path, "mmseg", tmp_path / "seg.pth")["settings"]
    assert settings["patch_bias"] is True and settings["norm_cfg"] == {"type": "LN", "eps": 1e-6}
    assert (settings["embed_dims"], settings["num_layers"], settings["num_heads"]) == (48, 6, 3)


def import_mm(monkeypatch):
    """mmseg 1.2 imports mmcv's compiled ops (mmseg/utils/mask_classification.py: point_sample) at
    package import; mmcv-lite has none. The ViT uses none: a placeholder module lets the package import."""
    pytest.importorskip("mmpretrain")
    pytest.importorskip("mmseg")
    try:
        import mmcv.ops  # noqa: F401  (full mmcv)
    except ImportError:
        ops = types.ModuleType("mmcv.ops")
        ops.__file__ = "placeholder"
        ops.__getattr__ = lambda name: (
            (_ for _ in ()).throw(AttributeError(name)) if name.startswith("__") else type(name, (), {})
        )
        monkeypatch.setitem(sys.modules, "mmcv.ops", ops)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["mmseg", "mmpretrain"])
def test_mm_exports_load_strictly_into_the_openmmlab_vit(tmp_path, monkeypatch, layout):
    import_mm(monkeypatch)
    from hybrid_distill.weights.consumers import mm_backbone, mm_tokens

    path, student = student_file(tmp_path)
    result = export(path, layout, tmp_path / f"{layout}.pth", verify=True)
    assert result["verified_with"] == f"{layout} VisionTransformer" and result["max_feature_diff"] < 1e-5
    backbone = mm_backbone(layout, result["settings"])
    backbone.load_state_dict(torch.load(tmp_path / f"{layout}.pth", weights_only=True)["state_dict"], strict=True)
    backbone.eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (mm_tokens(backbone, layout, x) - features(student)).abs().max() < 1e-5
    if layout == "mmseg":  # mmseg's default patch_bias=False has no place for the bias: a strict load says so
        bare = mm_backbone(layout, dict(result["settings"], patch_bias=False))
        with pytest.raises(RuntimeError, match="patch_embed.projection.bias"):
            bare.load_state_dict(torch.load(tmp_path / f"{layout}.pth", weights_only=True)["state_dict"])


def test_export_records_itself_and_may_replace_only_its_own_files(tmp_path, capsys):
    from hybrid_distill.cli import main

    path, _ = student_file(tmp_path)
    out = tmp_path / "student.safetensors"
    assert main(["export", str(path), "--out", str(out)]) == 0
    record = json.loads((tmp_path / "student.safetensors.export.json").read_text())
    assert record["format"] == "timm" and record["run"] == str(path) and record["provenance"]["git_sha"]
    assert main(["export", str(path), "--out", str(out)]) == 0  # its own file: replaced
    foreign = tmp_path / "notes.pth"
    foreign.write_bytes(b"someone's file")
    assert main(["export", str(path), "--out", str(foreign)]) == 2
    assert foreign.read_bytes() == b"someone's file" and "was not written by" in capsys.readouterr().err
