"""Teacher weights in the layouts today's teachers are released in, written by the tests from a tiny
random timm model (the names as timm's converters read them) and loaded back through
`build_teacher_backbone`: DINOv3's repository, EVA-02's, Perception Encoder's, SigLIP's big_vision .npz
and RADIO's timm form. Each must give the original model's weights and features exactly."""

import re

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from hybrid_distill.weights.teachers import TEACHERS, build_teacher_backbone

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def random_model(arch: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=0, **SMALL, **extra).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def renamed(sd: dict, swaps: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in sd.items():
        for old, new in swaps:
            k = re.sub(old, new, k)
        out[k] = v
    return out


def dinov3_layout(model) -> dict:
    """facebookresearch/dinov3 names: storage_tokens, ls1/ls2.gamma, one qkv.bias (k part zero), rope periods."""
    sd = renamed(model.state_dict(), [(r"^reg_token$", "storage_tokens"), (r"gamma_(\d)$", r"ls\1.gamma")])
    for i in range(len(model.blocks)):
        q, v = sd.pop(f"blocks.{i}.attn.q_bias"), sd.pop(f"blocks.{i}.attn.v_bias")
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    sd["mask_token"], sd["rope_embed.periods"] = torch.zeros(1, 64), torch.ones(8)
    return sd


def eva02_layout(model) -> dict:
    """baaivision/EVA EVA-02 MIM names, in {'module': ...}: SwiGLU mlp.w1 / w2 / ffn_ln / w3, q_bias and
    v_bias, the final norm as `norm`, the MIM mask token and lm_head, rope buffers."""
    sd = renamed(
        model.state_dict(),
        [
            (r"mlp\.fc1_g", "mlp.w1"),
            (r"mlp\.fc1_x", "mlp.w2"),
            (r"mlp\.norm", "mlp.ffn_ln"),
            (r"mlp\.fc2", "mlp.w3"),
            (r"attn\.q_proj\.bias", "attn.q_bias"),
            (r"attn\.v_proj\.bias", "attn.v_bias"),
            (r"^fc_norm\.", "norm."),
        ],
    )
    sd.update(
        {"mask_token": torch.zeros(1, 1, 64), "lm_head.weight": torch.zeros(8, 64), "rope.freqs_cos": torch.ones(4)}
    )
    return {"module": sd}


def pe_layout(model) -> dict:
    """facebookresearch/perception_models names under `visual.`: conv1, positional_embedding, class_embedding,
    ln_pre / ln_post, transformer.resblocks.i.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj},
    attn_pool.{probe, attn.in_proj_*, attn.out_proj, layernorm, mlp}."""
    sd = dict(model.state_dict())
    pool_q, pool_kv = sd.pop("attn_pool.q.weight"), sd.pop("attn_pool.kv.weight")
    sd["attn_pool.attn.in_proj_weight"] = torch.cat([pool_q, pool_kv])
    sd["attn_pool.attn.in_proj_bias"] = torch.cat([sd.pop("attn_pool.q.bias"), sd.pop("attn_pool.kv.bias")])
    sd["class_embedding"] = sd.pop("cls_token").flatten()
    sd["positional_embedding"] = sd.pop("pos_embed")[0]
    swaps = [
        (r"^patch_embed\.proj", "conv1"),
        (r"^norm_pre", "ln_pre"),
        (r"^norm\.", "ln_post."),
        (r"^blocks\.", "transformer.resblocks."),
        (r"\.norm(\d)\.", r".ln_\1."),
        (r"attn\.qkv\.(weight|bias)", r"attn.in_proj_\1"),
        (r"^attn_pool\.proj", "attn_pool.attn.out_proj"),
        (r"\.attn\.proj\.", ".attn.out_proj."),
        (r"mlp\.fc1", "mlp.c_fc"),
        (r"mlp\.fc2", "mlp.c_proj"),
        (r"^attn_pool\.latent", "attn_pool.probe"),
        (r"^attn_pool\.norm", "attn_pool.layernorm"),
    ]
    return {f"visual.{k}": v for k, v in renamed(sd, swaps).items()}


def radio_layout(model) -> dict:
    """NVlabs/RADIO's timm form (its HF model.safetensors): radio_model.model.* with patch_generator's
    bias-free linear embedder, CLS + registers in one table and a position grid; conditioner and adaptors."""
    sd = dict(model.state_dict())
    D = sd["cls_token"].shape[-1]
    out = {f"radio_model.model.{k}": v for k, v in sd.items() if k.startswith("blocks.")}
    out["radio_model.model.patch_generator.embedder.weight"] = sd["patch_embed.proj.weight"].reshape(D, -1)
    out["radio_model.model.patch_generator.pos_embed"] = sd["pos_embed"]
    out["radio_model.model.patch_generator.cls_token.token"] = torch.cat([sd["cls_token"][0], sd["reg_token"][0]])
    out["radio_model.input_conditioner.norm_mean"] = torch.zeros(3, 1, 1)
    out["radio_model.adaptors.siglip.head_mlp.final.weight"] = torch.zeros(8, D)
    return out


def big_vision_npz(model, path) -> None:
    """google-research/big_vision SigLIP names under params/img/ (flax kernels: HWIO convs, (in, out) dense,
    (D, H, hd) query/key/value, (H, hd, D) out), a text tower beside it."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D, H = model.embed_dim, model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
    }
    w["pos_embedding"] = sd["pos_embed"]
    w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"] = sd["norm.weight"], sd["norm.bias"]

    def attention(prefix: str, weights: list, biases: list, proj_w, proj_b):
        for name, weight, bias in zip(("query", "key", "value"), weights, biases, strict=True):
            w[f"{prefix}{name}/kernel"] = weight.T.reshape(D, H, D // H)
            w[f"{prefix}{name}/bias"] = bias.reshape(H, D // H)
        w[f"{prefix}out/kernel"] = proj_w.reshape(D, H, D // H).transpose(1, 2, 0)
        w[f"{prefix}out/bias"] = proj_b

    def mlp(prefix: str, block: str):
        for r in range(2):
            w[f"{prefix}Dense_{r}/kernel"] = sd[f"{block}.fc{r + 1}.weight"].T
            w[f"{prefix}Dense_{r}/bias"] = sd[f"{block}.fc{r + 1}.bias"]

    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}", f"Transformer/encoderblock_{i}/"
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = sd[f"{b}.{norm}.weight"], sd[f"{b}.{norm}.bias"]
        qkv, qkv_bias = np.split(sd[f"{b}.attn.qkv.weight"], 3), np.split(sd[f"{b}.attn.qkv.bias"], 3)
        attention(
            f"{p}MultiHeadDotProductAttention_0/", qkv, qkv_bias, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"]
        )
        mlp(f"{p}MlpBlock_0/", f"{b}.mlp")
    qkv = [sd["attn_pool.q.weight"], *np.split(sd["attn_pool.kv.weight"], 2)]
    qkv_bias = [sd["attn_pool.q.bias"], *np.split(sd["attn_pool.kv.bias"], 2)]
    head = "MAPHead_0/"
    attention(
        f"{head}MultiHeadDotProductAttention_0/", qkv, qkv_bias, sd["attn_pool.proj.weight"], sd["attn_pool.proj.bias"]
    )
    w[f"{head}probe"] = sd["attn_pool.latent"]
    w[f"{head}LayerNorm_0/scale"] = sd["attn_pool.norm.weight"]
    w[f"{head}LayerNorm_0/bias"] = sd["attn_pool.norm.bias"]
    mlp(f"{head}MlpBlock_0/", "attn_pool.mlp")
    arrays = {f"params/img/{k}": v for k, v in w.items()}
    arrays["params/txt/Embed_0/embedding"] = np.zeros((8, 4), dtype=np.float32)
    np.savez(path, **arrays)


LAYOUTS = {
    "dinov3": ("vit_small_patch16_dinov3_qkvb", {}, dinov3_layout, "dinov3"),
    "eva02": ("eva02_base_patch14_224", {}, eva02_layout, "eva02 ('module' wrapper)"),
    "pe_core": ("vit_pe_core_tiny_patch16_384", {}, pe_layout, "pe"),
    "radio": ("vit_base_patch16_radio_v3", {}, radio_layout, "radio"),
}


def same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_features(pixels), a.forward_features(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", LAYOUTS)
def test_a_file_in_the_official_layout_loads_into_the_timm_model(family, tmp_path):
    arch, extra, layout, fmt = LAYOUTS[family]
    model = random_model(arch, **extra)
    if family == "radio":  # RADIO's embedder is a bias-free Linear
        model.patch_embed.proj.bias.data.zero_()
    path = tmp_path / f"{family}.safetensors"
    payload = layout(model)
    if "module" in payload:  # EVA-02 releases a torch pickle {'module': ...}
        path = tmp_path / f"{family}.pt"
        torch.save(payload, path)
    else:
        save_file({k: v.contiguous() for k, v in payload.items()}, str(path))
    loaded, record = build_teacher_backbone(arch, file=path, model_kwargs=dict(SMALL, **extra))
    assert record["format"] == fmt
    same_model(model, loaded)


def test_a_big_vision_npz_loads_into_the_siglip_model(tmp_path):
    model = random_model("vit_base_patch16_siglip_224")
    big_vision_npz(model, tmp_path / "siglip2.npz")
    loaded, record = build_teacher_backbone(
        "vit_base_patch16_siglip_224.v2_webli", file=tmp_path / "siglip2.npz", model_kwargs=dict(SMALL)
    )
    assert record["format"] == "big_vision npz" and record["license"].startswith("Apache-2.0")
    same_model(model, loaded)
    with torch.no_grad():  # the attention-pool head too: the summary target
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_an_npz_holding_pickled_objects_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "bad.npz", **{"params/img/embedding/kernel": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match=r"bad\.npz \(big_vision npz\) does not fit .*allow_pickle=False"):
        build_teacher_backbone("vit_base_patch16_siglip_224", file=tmp_path / "bad.npz", model_kwargs=dict(SMALL))


def test_the_list_names_each_new_family_with_its_licence():
    rows = {s.arch: s.license for s in TEACHERS.values()}
    assert rows["vit_base_patch16_dinov3.lvd1689m"].startswith("DINOv3 License")
    assert rows["eva02_base_patch14_224.mim_in22k"].startswith("MIT")
    assert rows["vit_pe_core_base_patch16_224.fb"].startswith("Apache-2.0")
    assert rows["vit_base_patch16_siglip_224.v2_webli"].startswith("Apache-2.0")
    assert rows["vit_base_patch16_radio_v3.c_radio"].startswith("NVIDIA Open Model License")
