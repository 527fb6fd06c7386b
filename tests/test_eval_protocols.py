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


def majority(model, train_ds, test_ds, pool: str) -> dict:
    """A toy protocol: every test image gets the training split's most frequent class."""
    train = torch.tensor([label for _, label in train_ds])
    test = torch.tensor([label for _, label in test_ds])
    hit = 100.0 * (test == train.bincount().argmax()).float().mean().item()
    return {"protocol": "majority", "top1": hit, "config": {"pool": pool}}


@pytest.fixture
def toy():
    protocol = register(Protocol("majority", majority, lambda args, info, out, source: {"pool": args.pool}, ("top1",)))
    yield protocol
    del PROTOCOLS["majority"]


@pytest.fixture
def folder(tmp_path):
    """train/: 6 images of c0, 3 of c1, 3 of c2; val/: 2 of c0, 1 of c1, 1 of c2, so the majority scores 50%."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (6, 3, 3)), ("val", (2, 1, 1))):
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

    assert main(["eval", "majority", str(model_file), "--data", str(folder), "--pool", "mean"]) == 0
    written = json.loads((tmp_path / "eval" / f"majority-data-mean-sha{_sha12(model_file)}.json").read_text())
    assert written["top1"] == 50.0 and written["config"] == {"pool": "mean"}
    assert "majority: top1 50.00%" in capsys.readouterr().out  # the registered metrics, and only those

    api = hybrid_distill.evaluate(create_vit("vit_tiny_patch16_224", **kw), folder, "majority")
    assert api["top1"] == 50.0 and api["data"]["name"] == "data" and "path" not in api

    spec = OmegaConf.create({"evaluate": {"knn": True, "linear": False, "finetune": None, "majority": True}})
    assert protocols(spec) == ["knn", "majority"]


def test_a_protocol_is_registered_once():
    with pytest.raises(ValueError, match="'knn' is registered twice"):
        register(Protocol("knn", majority, lambda args, info, out, source: {}))
    assert PROTOCOLS["knn"].run.__name__ == "knn_eval"


def _sha12(path) -> str:
    from hybrid_distill.files import sha256_file

    return sha256_file(path)[:12]
