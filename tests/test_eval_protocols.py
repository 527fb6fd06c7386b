"""The protocol registry: a protocol registered in one place runs through `eval`, the API and the study's list."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import hybrid_distill
from hybrid_distill.cli import main
from hybrid_distill.evaluation.protocols import PROTOCOLS, Protocol, register
from hybrid_distill.files import save_model_file
from hybrid_distill.models.load import create_vit
from hybrid_distill.study.cell import protocols


def constant(model, train_ds, test_ds, label: int) -> dict:
    """A toy protocol: every test image gets one class, named by its own flag --label."""
    test = torch.tensor([y for _, y in test_ds])
    return {"protocol": "constant", "top1": 100.0 * (test == label).float().mean().item(), "config": {"label": label}}


@pytest.fixture
def toy():
    """The one place the toy protocol is added: its registry entry, with its flag."""
    protocol = register(
        Protocol(
            "constant",
            constant,
            lambda args, info, out, source: {"label": args.label},
            metrics=("top1",),
            variant="label",
            flags={"--label": {"type": int, "default": 0}},
        )
    )
    yield protocol
    del PROTOCOLS["constant"]


@pytest.fixture
def folder(tmp_path):
    """train/: 2 images of each of c0, c1, c2; val/: 2 of c0, 1 of c1, 1 of c2."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (2, 2, 2)), ("val", (2, 1, 1))):
        for c, n in enumerate(counts):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / f"c{c}" / f"{i}.png")
    return tmp_path / "data"


def test_a_registered_protocol_runs_through_eval_the_api_and_the_study_list(toy, folder, tmp_path, capsys):
    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    model_file = tmp_path / "m.pt"
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, model_file)

    assert main(["eval", "constant", str(model_file), "--data", str(folder), "--label", "1"]) == 0
    written = json.loads((tmp_path / "eval" / f"constant-data-1-sha{_sha12(model_file)}.json").read_text())
    assert written["top1"] == 25.0 and written["config"] == {"label": 1}  # 1 of the 4 val images is c1
    assert "constant: top1 25.00%  ->" in capsys.readouterr().out  # the registered metrics, and only those

    api = hybrid_distill.evaluate(create_vit("vit_tiny_patch16_224", **kw), folder, "constant")
    assert api["top1"] == 50.0 and api["data"]["name"] == "data" and "path" not in api  # default --label 0

    spec = OmegaConf.create({"evaluate": {"knn": True, "linear": False, "finetune": None, "constant": True}})
    assert protocols(spec) == ["knn", "constant"]


def test_a_protocol_is_registered_once():
    with pytest.raises(ValueError, match="'knn' is registered twice"):
        register(Protocol("knn", constant, lambda args, info, out, source: {}))
    assert PROTOCOLS["knn"].run.__name__ == "knn_eval"


def _sha12(path) -> str:
    from hybrid_distill.files import sha256_file

    return sha256_file(path)[:12]
