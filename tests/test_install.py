"""The declared timm minimum has what the models read (scripts/check_timm_minimum.sh runs this file and
tests/test_models.py against exactly that version)."""

import re
from pathlib import Path

import timm
from timm.layers import Attention
from timm.models.vision_transformer import Block

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def declared_minimum(package: str) -> tuple[int, ...]:
    found = re.search(rf'"{package}>=([\d.]+)"', PYPROJECT.read_text())
    return tuple(int(p) for p in found.group(1).split("."))


def test_installed_timm_meets_the_declared_minimum():
    installed = tuple(int(p) for p in re.match(r"[\d.]+", timm.__version__).group(0).rstrip(".").split("."))
    assert installed >= declared_minimum("timm") >= (1, 0, 28)


def test_timm_attention_has_every_attribute_the_models_read():
    block = Block(dim=8, num_heads=2)
    assert type(block.attn) is Attention  # models/attention.py check_block
    for name in (
        "qkv",
        "q_norm",
        "k_norm",
        "norm",
        "gate",
        "proj",
        "attn_drop",
        "proj_drop",
        "scale",
        "num_heads",
        "head_dim",
        "attn_dim",
        "fused_attn",
    ):
        assert hasattr(block.attn, name), name
