"""Issue 5: a run started from official-format teacher files, with the network cut off, trains and its
manifest lists each file's SHA-256."""

import hashlib
import json
import socket

import pytest
import torch
from conftest import tiny_run_config, tiny_vit

from hybrid_distill.config import from_dict
from hybrid_distill.trainer import Trainer


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_run_from_teacher_files_offline_records_hashes(idx_folder, tmp_path, no_network):
    mae_file, deit_file = tmp_path / "mae_pretrain_vit_tiny.pth", tmp_path / "deit_tiny.pth"
    torch.save({"model": tiny_vit(1).state_dict()}, mae_file)  # MAE: {'model': encoder}
    torch.save({"model": tiny_vit(2, num_classes=10).state_dict()}, deit_file)  # DeiT: with its head
    values = tiny_run_config(idx_folder, tmp_path / "runs", **{"train.max_steps": 2})
    values["teachers"]["sup"].update(weights=str(deit_file))
    values["teachers"]["mim"].update(weights=str(mae_file))
    trainer = Trainer(from_dict(values))
    trainer.fit()
    assert trainer.step == 2
    manifest = json.loads((trainer.run_dir / "manifest.json").read_text())["teachers"]
    for name, path in (("sup", deit_file), ("mim", mae_file)):
        assert manifest[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the teacher got the file's weights, not a fresh init
    expected = tiny_vit(1).state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.equal(trainer.teachers.teachers["mim"].model.blocks[0].attn.qkv.weight.cpu(), expected)


def test_a_weights_file_of_another_patch_size_stops_in_one_line_unless_resampling_is_asked(tmp_path, capsys):
    from hybrid_distill.config import ConfigError, TeacherConfig
    from hybrid_distill.files import save_model_file
    from hybrid_distill.models.load import create_vit
    from hybrid_distill.models.teacher import build_teacher_model
    from hybrid_distill.summary import teacher_line

    kw = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2)
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / "p7.pt")
    cfg = TeacherConfig(
        arch="vit_tiny_patch16_224", weights=str(tmp_path / "p7.pt"), model_kwargs={"patch_size": 4}, match_grid=False
    )
    with pytest.raises(ConfigError, match=r"teachers.t: .*p7.pt has 7x7 patches but the model is built with 4x4"):
        build_teacher_model("t", cfg)
    cfg.resample = True  # asked for by name: timm resamples the kernel, and the summary shows the result
    model, record = build_teacher_model("t", cfg)
    assert tuple(model.patch_embed.patch_size) == (4, 4)
    line = teacher_line("t", record)
    assert "28x28 px in, 4x4 patches, 7x7 grid, 1 prefix token(s)" in line
