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
