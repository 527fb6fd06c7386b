"""The README's Python API example runs as written, and the API's pieces behave as documented."""

import re
from pathlib import Path

import pytest
import torch

import hybrid_distill

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    run, student, reloaded = scope["run"], scope["student"], scope["reloaded"]
    assert (run / "checkpoints").is_dir() and run.name == "api-demo"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval().forward_features(x), reloaded.eval().forward_features(x))


def test_overrides_use_double_underscores_for_dots():
    cfg = hybrid_distill.api.as_config({"teachers": {}}, {"optim__blr": 1e-4, "train__epochs": 3})
    assert cfg.optim.blr == 1e-4 and cfg.train.epochs == 3
    with pytest.raises(ValueError, match="protocol"):
        hybrid_distill.evaluate("vit_tiny_patch16_224", "fashion_mnist", "svm")


def test_import_is_light_and_names_the_api():
    import subprocess
    import sys

    code = "import sys, hybrid_distill; print('torch' in sys.modules, sorted(hybrid_distill.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "'train'" in out and "'load_student'" in out


def test_evaluate_is_the_eval_commands_code_with_its_defaults(tmp_path, capsys):
    """The API once used crop 1.0 where `eval` uses 0.875 on a folder (46.25 against 48.75 top-1)."""
    import json

    import numpy as np
    from PIL import Image

    from hybrid_distill.cli import main
    from hybrid_distill.files import save_model_file
    from hybrid_distill.models.load import create_vit

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 20)):
        for i in range(n):
            folder = tmp_path / "data" / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / "m.pt")
    assert main(["eval", "knn", str(tmp_path / "m.pt"), "--data", str(tmp_path / "data"), "--k", "5"]) == 0
    cli = json.loads(next((tmp_path / "eval").glob("knn-*.json")).read_text())
    api = hybrid_distill.evaluate(tmp_path / "m.pt", tmp_path / "data", "knn", k=5, out=tmp_path / "api")
    assert api["top1"] == cli["top1"] and api["top5"] == cli["top5"] and api["data"]["crop_pct"] == 0.875
    from hybrid_distill.files import load_model

    as_object = hybrid_distill.evaluate(load_model(str(tmp_path / "m.pt")), tmp_path / "data", "knn", k=5)
    assert as_object["top1"] == cli["top1"] and "path" not in as_object  # a model object: nothing written
    probe = hybrid_distill.evaluate(tmp_path / "m.pt", tmp_path / "data", "linear", epochs=2, no_cache=True)
    assert probe["protocol"] == "linear" and (tmp_path / "eval").is_dir()  # the docstring's epochs= is accepted
