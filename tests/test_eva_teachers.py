"""timm's Eva family as teachers (EVA-02, DINOv3, PE core): equivalence with the model's own attention,
rotary embeddings and registers included, through the relation, MSA, block-output, pruning and analysis
paths; one training step with an Eva MIM teacher; one-line refusal of blocks we cannot open."""

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY, tiny_run_config, tiny_vit
from timm.layers import apply_keep_indices_nlc
from torch.overrides import TorchFunctionMode

from hybrid_distill import cli
from hybrid_distill.analysis.extract import reduce_attention
from hybrid_distill.config import TeacherConfig, from_dict
from hybrid_distill.masking import KeepGiven, KeepLeastRedundant, all_indices, least_redundant
from hybrid_distill.models.attention import UnsupportedBlock, attention_logits
from hybrid_distill.models.student import Student
from hybrid_distill.models.teacher import Teacher
from hybrid_distill.trainer import Trainer

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=0)
# family -> (timm name, kwargs): the variants of q, k and v the Eva attention modules have
FAMILIES = {
    "eva02": ("eva02_tiny_patch14_224", {}),  # EvaAttention, fused qkv with q and v biases, 'cat' RoPE
    "eva02_separate_qkv": ("eva02_base_patch14_224", {}),  # q_proj, k_proj, v_proj
    "dinov3": ("vit_small_patch16_dinov3", {}),  # 4 registers, DINOv3 RoPE (rotate-half), layer scale
    "dinov3_qkvb_qk_norm": ("vit_small_patch16_dinov3_qkvb", {"qk_norm": True}),
    "pe_core": ("vit_pe_core_tiny_patch16_384", {}),  # AttentionRope, biased fused qkv, norm_pre
    "pe_core_grouped_kv": ("vit_pe_core_tiny_patch16_384", {"qkv_fused": False, "num_kv_heads": 2}),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", {}),  # one rotary embedding per block
}
GRID, L = (4, 4), 16


class Softmaxes(TorchFunctionMode):
    """Every softmax's input and output while active: the model's own pre-softmax attention logits (and
    maps) when its attention runs timm's non-fused branch, q k^T * scale (+ mask) then softmax."""

    def __init__(self):
        super().__init__()
        self.inputs, self.outputs = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.Tensor.softmax, torch.softmax, F.softmax):
            self.inputs.append(args[0].detach().clone())
            self.outputs.append(out.detach().clone())
        return out


def eva(family: str, seed: int = 0, **extra):
    """A tiny random Eva model, every parameter (biases, layer scales, norms) moved off timm's init."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**SMALL, **kwargs, **extra}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def own_softmaxes(model, pixels) -> Softmaxes:
    """The softmaxes of a copy of `model` run by its own forward_features in timm's non-fused branch."""
    ref = copy.deepcopy(model)
    for block in ref.blocks:
        block.attn.fused_attn = False
    seen = Softmaxes()
    with torch.no_grad(), seen:
        ref.forward_features(pixels)
    return seen


def at(x: torch.Tensor, rows: torch.Tensor, dims=(2, 3)) -> torch.Tensor:
    """x (B, ...) indexed per image at the token rows (B, n) along each of `dims`."""
    out = []
    for b in range(x.shape[0]):
        t = x[b]
        for d in dims:
            t = t.index_select(d - 1, rows[b])
        out.append(t)
    return torch.stack(out)


def cls_and(keep: torch.Tensor, P: int) -> torch.Tensor:
    """Token rows of CLS and the kept patches (B, 1 + K) in a sequence with P prefix tokens."""
    return torch.cat([torch.zeros_like(keep[:, :1]), keep + P], dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_relations_are_the_models_own_pre_softmax_logits(family):
    model = eva(family)
    teacher = Teacher("mim", TeacherConfig(arch=family, relation_blocks=[0, 1, 2], relation_kind="scaled"), model, GRID)
    images = torch.rand(2, 3, 32, 32)
    own = own_softmaxes(model, teacher.normalize(images)).inputs  # (B, H, P + L, P + L) per block
    P = model.num_prefix_tokens
    every = all_indices(2, L)
    out = teacher(images, KeepGiven(every)).relations
    keep = torch.tensor([[0, 3, 7, 15], [2, 4, 9, 10]])
    kept = teacher(images, KeepGiven(keep)).relations
    for i in range(3):
        assert out[i].shape == (2, 4, 1 + L, 1 + L)  # CLS + patches, registers dropped
        torch.testing.assert_close(out[i], at(own[i], cls_and(every, P)), rtol=0, atol=1e-5)
        torch.testing.assert_close(kept[i], at(own[i], cls_and(keep, P)), rtol=0, atol=1e-5)
    raw = Teacher("mim", TeacherConfig(arch=family, relation_blocks=[2]), model, GRID)(images, KeepGiven(keep))
    torch.testing.assert_close(raw.relations[2] * model.blocks[2].attn.scale, kept[2], rtol=0, atol=1e-5)
    # the rotary embedding matters: q k^T without it is another matrix
    x, _ = teacher.embed(images)
    no_rope = attention_logits(model.blocks[0].attn, model.blocks[0].norm1(x))
    assert not torch.allclose(no_rope, own[0], atol=1e-2)


@pytest.mark.parametrize("family", ["eva02", "dinov3", "pe_core"])
def test_msa_and_block_outputs_are_the_models_own(family):
    model = eva(family, seed=1)
    P, images, keep = model.num_prefix_tokens, torch.rand(2, 3, 32, 32), torch.tensor([[1, 5, 6], [0, 8, 15]])
    teacher = Teacher("mim", TeacherConfig(arch=family, relation_blocks=[1], relation_kind="msa"), model, GRID)
    heads, outputs = {}, {}
    ref = copy.deepcopy(model)  # MSA^i: the concatenated heads entering attn.norm, before proj (eq. 2)
    ref.blocks[1].attn.norm.register_forward_pre_hook(lambda m, a: heads.setdefault(1, a[0]))
    ref.blocks[1].register_forward_hook(lambda m, a, out: outputs.setdefault(1, out))
    with torch.no_grad():
        ref.forward_features(teacher.normalize(images))
    B, N, _ = heads[1].shape
    own = heads[1].view(B, N, 4, 16).transpose(1, 2)  # (B, H, N, hd)
    msa = teacher(images, KeepGiven(keep)).relations[1]
    torch.testing.assert_close(msa, at(own, cls_and(keep, P), dims=(2,)), rtol=0, atol=1e-5)
    cfg = TeacherConfig(arch=family, relation_blocks=[1], relation_kind="features")
    tokens = Teacher("mim", cfg, model, GRID)(images, KeepGiven(keep)).relations[1]  # T^i, whitened
    expected = F.layer_norm(at(outputs[1], cls_and(keep, P), dims=(1,)), (64,))
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_pruned_dinov3_keeps_its_registers_and_gathers_rope_as_timms_patch_dropout():
    """PCAE pruning after block 0 with 4 registers, written out with the model's own blocks, timm's own
    rotary-embedding gather (apply_keep_indices_nlc, its patch dropout's) and the model's own softmax."""
    model = eva("dinov3", seed=2)
    picker = Teacher("mim", TeacherConfig(arch="dinov3", relation_blocks=[1, 2]), model, GRID)
    images = torch.rand(2, 3, 32, 32)
    pruned = picker(images, KeepLeastRedundant({0: 9, 1: 5}, prune=True))
    ref = copy.deepcopy(model)
    for block in ref.blocks:
        block.attn.fused_attn = False
    P, keep = 5, all_indices(2, L)
    with torch.no_grad():
        x, rope = ref._pos_embed(ref.patch_embed(picker.normalize(images)))  # rope (L, 2 hd)
        x = ref.norm_pre(x)
        full_rope, logits = rope, {}
        for i, count in ((0, 9), (1, 5), (2, None)):
            seen = Softmaxes()
            with seen:
                x = ref.blocks[i](x, rope=rope)
            logits[i] = seen.inputs[0]  # (B, H, P + n, P + n)
            if count is None:
                break
            chosen = least_redundant(x[:, P:], count)  # patches only: CLS and registers never scored
            keep = keep.gather(1, chosen)
            x = torch.cat([x[:, :P], torch.stack([t[P:][c] for t, c in zip(x, chosen)])], dim=1)
            rope = apply_keep_indices_nlc(x, full_rope, keep).unsqueeze(1)  # (B, 1, n, 2 hd), as Eva._pos_embed
    assert torch.equal(pruned.keep, keep)
    last = torch.cat([torch.zeros(2, 1, dtype=torch.long), torch.arange(P, P + 5).expand(2, 5)], dim=1)
    torch.testing.assert_close(pruned.relations[2] * model.blocks[2].attn.scale, at(logits[2], last), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["eva02", "dinov3"])
def test_analysis_maps_are_the_models_own_softmax(family):
    model = eva(family, seed=3)
    images = torch.randn(2, 3, 32, 32)
    got = reduce_attention(model, images, lambda i, probs: probs)
    own = own_softmaxes(model, images).outputs
    assert len(got) == len(own) == 3
    for g, o in zip(got, own):
        torch.testing.assert_close(g, o, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prune", [False, True])
def test_a_training_step_with_an_eva02_mim_teacher(idx_folder, tmp_path, prune):
    """Hybrid config: a ViT supervised teacher's features, an EVA-02 MIM teacher's relations at blocks
    -3, -2 that also picks the kept tokens (49 -> 34 -> 23 -> 16)."""
    mim = {
        "arch": "eva02_tiny_patch14_224",
        "weights": "random",
        "model_kwargs": dict(TINY),
        "relation_blocks": [-3, -2],
    }
    cfg = from_dict(
        tiny_run_config(
            idx_folder,
            tmp_path,
            **{"teachers.mim": mim, "train.max_steps": 1, "masking.prune_teacher": prune, "optim.warmup_epochs": 0},
        )
    )  # lr > 0 at step 0
    trainer = Trainer(cfg)
    assert type(trainer.teachers.teachers["mim"].model).__name__ == "Eva"
    before = copy.deepcopy(trainer.student.state_dict())
    trainer.fit()
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])  # step 1's losses
    assert trainer.step == 1 and logged["skipped"] == 0
    assert all(math.isfinite(logged[k]) and logged[k] > 0 for k in ("mim/rel3", "mim/rel4", "sup/feat"))
    targets = trainer.teachers(torch.rand(2, 3, 28, 28))
    assert targets.keep.shape == (2, 16) and targets.relations["mim"][3].shape == (2, 3, 17, 17)
    moved = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, before[k])]
    assert all(f"backbone.blocks.{i}.attn.qkv.weight" in moved for i in range(6))


def test_an_unsupported_block_is_refused_in_one_line_naming_what_is_supported(idx_folder, tmp_path, capsys):
    post_norm = eva("eva02", use_post_norm=True)  # EvaBlockPostNorm attends to its un-normed input
    with pytest.raises(
        UnsupportedBlock,
        match=r"VisionTransformer Blocks .* or the Eva family's EvaBlock .*"
        r"got EvaBlockPostNorm with EvaAttention",
    ):
        Teacher("mim", TeacherConfig(arch="x", relation_blocks=[1]), post_norm, GRID)
    with pytest.raises(UnsupportedBlock, match=r"VisionTransformer Blocks \(.*\); got EvaBlock"):
        Student(eva("eva02"), [0.0] * 3, [1.0] * 3, {}, [])  # a student is a VisionTransformer
    Teacher("sup", TeacherConfig(arch="x", features=True), tiny_vit(), (7, 7))  # ViTs as before
    beit = {"arch": "beit_base_patch16_224", "weights": "random", "model_kwargs": dict(TINY), "relation_blocks": [-2]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_run_config(idx_folder, tmp_path, **{"teachers.mim": beit})))
    assert cli.main(["train", str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "got Block with Attention" in err and "Eva family" in err, err
