"""Attention distance, NMI, extraction, monitor and the analyze command."""

import copy
import json
import math
from functools import partial

import conftest
import numpy as np
import pytest
import torch

from hybrid_distill.analysis import AttentionMonitor, attention_distance, attention_nmi, reduce_attention
from hybrid_distill.analysis.command import main as analyze
from hybrid_distill.analysis.extract import query_maps
from hybrid_distill.files import save_model_file
from hybrid_distill.models.load import create_vit

TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3)


def with_prefix(patch_attn: torch.Tensor, prefix_mass: torch.Tensor | float = 0.0, prefix: int = 1):
    """(B, H, L, L) rows summing to 1 -> (B, H, P+L, P+L): each patch row gives `prefix_mass` to CLS."""
    B, H, L, _ = patch_attn.shape
    mass = torch.as_tensor(prefix_mass, dtype=patch_attn.dtype).expand(B, H, L).unsqueeze(-1)  # (B, H, L, 1)
    full = torch.zeros(B, H, prefix + L, prefix + L, dtype=patch_attn.dtype)
    full[..., :prefix, :] = 1.0 / (prefix + L)  # prefix rows: dropped by the metrics anyway
    full[..., prefix:, :1] = mass
    full[..., prefix:, prefix:] = (1 - mass) * patch_attn
    return full


def one_hot(targets: list[int], L: int) -> torch.Tensor:
    return torch.eye(L, dtype=torch.float64)[targets]  # (L, L): row q attends to key targets[q]


# ---------------------------------------------------------------- distance, by hand


def test_distance_one_hot_on_known_keys():
    # 3x3 grid, patch 16: every query attends to the bottom-right cell (2, 2).
    # Distances in cells to (2, 2): sqrt8, sqrt5, 2, sqrt5, sqrt2, 1, 2, 1, 0.
    corner = one_hot([8] * 9, 9)
    # Second head: each query attends to itself -> distance 0.
    attn = with_prefix(torch.stack([corner, torch.eye(9, dtype=torch.float64)])[None])
    expected = 16 * (math.sqrt(8) + 2 * math.sqrt(5) + 2 * 2 + math.sqrt(2) + 2 * 1) / 9
    for renorm in (True, False):
        d = attention_distance(attn, grid_size=3, patch_size=16, renormalize=renorm)
        assert d.shape == (1, 2)
        torch.testing.assert_close(d, torch.tensor([[expected, 0.0]], dtype=torch.float64))


def test_distance_non_square_grid_and_patch():
    # grid 2 rows x 3 cols, patch (8 rows, 4 cols) pixels; query (r, c) attends to (1 - r, c): 8 px each.
    # A second map: (r, c) -> (r, (c + 1) % 3): 4, 4, 8 px per row -> mean 16/3.
    down = one_hot([3, 4, 5, 0, 1, 2], 6)
    right = one_hot([1, 2, 0, 4, 5, 3], 6)
    attn = with_prefix(torch.stack([down, right])[None], prefix=0)[..., :, :]
    d = attention_distance(attn, grid_size=(2, 3), patch_size=(8, 4), num_prefix_tokens=0)
    torch.testing.assert_close(d, torch.tensor([[8.0, 16 / 3]], dtype=torch.float64))


def test_prefix_mass_renormalised_vs_plain():
    # Query q gives mass m_q to CLS and the rest to one key: renormalised distance mean_q d_q,
    # plain (dBOT) distance mean_q (1 - m_q) d_q.
    L = 4  # 2x2 grid, patch 10; every query attends to cell 3 = (1, 1)
    d_q = torch.tensor([math.sqrt(2), 1, 1, 0], dtype=torch.float64) * 10
    m_q = torch.tensor([0.5, 0.25, 0.75, 0.1], dtype=torch.float64)
    attn = with_prefix(one_hot([3] * L, L)[None, None], m_q)
    renorm = attention_distance(attn, 2, 10, renormalize=True)
    plain = attention_distance(attn, 2, 10, renormalize=False)
    torch.testing.assert_close(renorm, d_q.mean().view(1, 1))
    torch.testing.assert_close(plain, ((1 - m_q) * d_q).mean().view(1, 1))


def test_constant_prefix_mass_scales_plain_distance_exactly():
    g = torch.Generator().manual_seed(0)
    patch = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64).softmax(-1)
    attn = with_prefix(patch, 0.3)
    plain = attention_distance(attn, 4, 16, renormalize=False)
    renorm = attention_distance(attn, 4, 16, renormalize=True)
    torch.testing.assert_close(plain, 0.7 * renorm)
    assert (renorm - plain).abs().min() > 1  # the two variants really differ with prefix mass


def test_distance_rejects_wrong_grid():
    with pytest.raises(ValueError, match="grid has 16 patches"):
        attention_distance(torch.rand(1, 1, 10, 10), grid_size=4, patch_size=16)


# ---------------------------------------------------------------- NMI, by hand


def test_nmi_uniform_attention_is_zero():
    attn = torch.full((2, 3, 17, 17), 1 / 17, dtype=torch.float64)
    torch.testing.assert_close(attention_nmi(attn), torch.zeros(2, 3, dtype=torch.float64))


def test_nmi_self_attention_is_one():
    eye = torch.eye(17, dtype=torch.float64).expand(2, 3, 17, 17)  # CLS attends to itself too
    # The 1e-8 added to every entry moves NMI off 1 by ~L * 1e-8 * log(1e8) / log(L) ~ 1e-6.
    torch.testing.assert_close(attention_nmi(eye), torch.ones(2, 3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_nmi_is_per_image_not_of_the_mean_map():
    # Image 0: identity; image 1: a cyclic shift. Each is a bijection -> NMI 1 per image.
    # The averaged map gives each query two keys with 1/2 and p(k) stays uniform:
    # I = log L - log 2, H(q) = H(k) = log L -> NMI = 1 - log 2 / log L.
    L = 8
    maps = torch.stack([torch.eye(L, dtype=torch.float64), one_hot([(q + 1) % L for q in range(L)], L)])
    attn = with_prefix(maps[:, None])  # (2, 1, 9, 9)
    per_image = attention_nmi(attn)
    of_mean = attention_nmi(attn.mean(dim=0, keepdim=True))
    torch.testing.assert_close(per_image, torch.ones(2, 1, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        of_mean, torch.tensor([[1 - math.log(2) / math.log(L)]], dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert per_image.mean() - of_mean.mean() > 0.3


def test_nmi_matches_joint_distribution_definition():
    # I(q;k) = sum_{q,k} p(q,k) log p(q,k) / (p(q) p(k)) written over the joint table, one image-head at a time.
    g = torch.Generator().manual_seed(1)
    attn = (3 * torch.randn(2, 2, 10, 10, generator=g, dtype=torch.float64)).softmax(-1)
    got = attention_nmi(attn)
    for b in range(2):
        for h in range(2):
            p = attn[b, h, 1:, 1:] + 1e-8
            joint = (p / p.sum(-1, keepdim=True)) / 9  # p(q, k), p(q) = 1/9
            pq, pk = joint.sum(1), joint.sum(0)
            mi = (joint * (joint / (pq[:, None] * pk[None, :])).log()).sum()
            hq, hk = -(pq * pq.log()).sum(), -(pk * pk.log()).sum()
            torch.testing.assert_close(got[b, h], mi / (hq * hk).sqrt())


# ---------------------------------------------------------------- extraction vs timm

tiny_vit = partial(conftest.tiny_vit, qkv_scale=8, **TINY)  # maps far from uniform


def timm_attention_by_hook(model, images) -> list[torch.Tensor]:
    """Post-softmax maps from timm's own non-fused branch: the input of attn_drop."""
    ref = copy.deepcopy(model).eval()
    maps = []
    for block in ref.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, inp, out: maps.append(inp[0].detach()))
    with torch.no_grad():
        ref.forward_features(images)
    return maps


@pytest.mark.parametrize(
    "extra", [{}, {"reg_tokens": 2}, {"pre_norm": True}, {"class_token": False, "global_pool": "avg"}]
)
def test_extraction_equals_timm_non_fused_and_leaves_model_unchanged(extra):
    model = tiny_vit(**extra).train()
    images = torch.randn(2, 3, 16, 16)
    fused = [b.attn.fused_attn for b in model.blocks]
    model.eval()
    with torch.no_grad():
        before = model.forward_features(images)
    model.train()
    got = reduce_attention(model, images, lambda i, probs: probs)
    expected = timm_attention_by_hook(model, images)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        assert g.shape == (2, 3, model.num_prefix_tokens + 16, model.num_prefix_tokens + 16)
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert model.training and [b.attn.fused_attn for b in model.blocks] == fused
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), before, rtol=0, atol=0)


def test_query_maps_are_head_mean_rows_of_the_maps():
    model = tiny_vit()
    images = torch.randn(2, 3, 16, 16)
    maps = query_maps(model, images, layers=[0, -1], queries=[5, 10])
    full = timm_attention_by_hook(model, images)
    assert maps.shape == (2, 2, 2, 16)
    for out, layer in zip(maps, (0, 2)):
        rows = full[layer][:, :, [6, 11], 1:].mean(1)
        torch.testing.assert_close(out, rows / rows.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="out of range"):
        query_maps(model, images, layers=[3], queries=[0])


def test_monitor_equals_direct_metric_calls():
    model = tiny_vit().train()
    images = torch.randn(4, 3, 16, 16)
    logged = AttentionMonitor(images, grid_size=4, patch_size=4)(model)
    assert model.training
    maps = timm_attention_by_hook(model, images)
    assert len(logged) == 3 * 3
    for i, probs in enumerate(maps):
        expect = {
            "distance": attention_distance(probs, 4, 4).mean(),
            "distance_plain": attention_distance(probs, 4, 4, renormalize=False).mean(),
            "nmi": attention_nmi(probs).mean(),
        }
        for name, value in expect.items():
            assert logged[f"attn/{name}/layer{i:02d}"] == pytest.approx(float(value), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- the command, end to end


def fashion_mnist_dir(root, n=12):
    rng = np.random.default_rng(0)
    conftest.write_idx(root, "t10k", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, (n,)))
    return root


def test_analyze_command_end_to_end(tmp_path, capsys):
    data = fashion_mnist_dir(tmp_path)
    kw = dict(img_size=28, patch_size=4, embed_dim=24, depth=3, num_heads=2)
    for name in ("student", "teacher"):
        save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / f"{name}.pt")
    out = tmp_path / "out"
    rc = analyze(
        [
            str(tmp_path / "student.pt"),
            str(tmp_path / "teacher.pt"),
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--data",
            f"fashion_mnist:{data}",
            "--num-images",
            "10",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--layers",
            "1",
            "-1",
            "--queries",
            "0.5,0.5",
            "0,1",
        ]
    )
    assert rc == 0
    report = json.loads((out / "analysis.json").read_text())
    assert set(report["models"]) == {"student", "teacher", "vit_tiny_patch16_224"}
    nmi = report["models"]["student"]["nmi"]["per_layer"]
    assert max(nmi) < 0.05 and f"NMI per layer [{nmi[0]:.3g}," in capsys.readouterr().out  # near-uniform, not 0.0
    assert report["data"]["num_images"] == 10 and len(report["data"]["indices"]) == 10
    assert "git_sha" in report["provenance"]
    student, timm_model = report["models"]["student"], report["models"]["vit_tiny_patch16_224"]
    assert len(student["distance"]["per_head"]) == 3 and len(student["distance"]["per_head"][0]) == 2
    assert len(timm_model["nmi"]["per_layer"]) == 12 and timm_model["grid_size"] == [2, 2]
    assert torch.tensor(student["query_maps"]["maps"]).shape == (2, 2, 2, 49)
    for name in ("distance.png", "distance_plain.png", "nmi.png", "attention_maps_student.png"):
        assert (out / name).stat().st_size > 1000
        assert str(out / name) in report["figures"]


def test_analyze_names_bad_input(tmp_path, capsys):
    data = fashion_mnist_dir(tmp_path)
    kw = dict(img_size=28, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / "m.pt")
    common = ["--data", f"fashion_mnist:{data}", "--out", str(tmp_path / "o")]
    cases = {
        "outside the 7x7 patch grid": [str(tmp_path / "m.pt"), "--num-images", "2", "--queries", "7,0"],
        "exceeds the 12 images": [str(tmp_path / "m.pt"), "--num-images", "13"],
        "unknown timm model": ["vit_nonexistent_model", "--num-images", "2"],
        "no such model file": [str(tmp_path / "missing.pt"), "--num-images", "2"],
    }
    for message, argv in cases.items():
        assert analyze(argv + common) == 2
        assert message in capsys.readouterr().err


def test_analyze_reads_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    kw = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, tmp_path / "m.pt")
    out = tmp_path / "out"
    assert (
        analyze(
            [
                str(tmp_path / "m.pt"),
                "--data",
                str(tmp_path / "images"),
                "--num-images",
                "5",
                "--map-images",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "analysis.json").read_text())
    assert report["models"]["m"]["grid_size"] == [4, 4] and "query_maps" not in report["models"]["m"]
    assert sorted(p.rsplit("/", 1)[1] for p in report["figures"]) == ["distance.png", "distance_plain.png", "nmi.png"]


def test_model_labels_tell_run_directories_of_the_same_name_apart(tmp_path):
    from hybrid_distill.analysis.command import model_labels

    for row in ("hybrid", "distill_sup"):
        (tmp_path / "cells" / row / "seed0").mkdir(parents=True)
    (tmp_path / "sup.pt").write_bytes(b"")
    specs = [str(tmp_path / "cells" / r / "seed0") for r in ("hybrid", "distill_sup")]
    assert model_labels([*specs, str(tmp_path / "sup.pt"), "vit_tiny_patch16_224", "vit_tiny_patch16_224"]) == [
        "hybrid-seed0",
        "distill_sup-seed0",
        "sup",
        "vit_tiny_patch16_224",
        "vit_tiny_patch16_224-2",
    ]
