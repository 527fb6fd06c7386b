"""The relation loss transfers a planted attention pattern (paper 3.1, eq. 2-3; claim (b)'s mechanism).

A controlled MIM teacher (study/controlled.py) has heads that attend locally or far by construction. A
student trained by the project's own `train` on that teacher's relations alone (no features, no masking)
must, after 160 steps, order its heads at the relation layers as the teacher does and correlate with the
teacher's Q K^T head by head. The blocks around the relation blocks order their heads the other way, so a
relation read one block off fails this test, as do heads crossed or a relation that passes no gradient.
"""

import numpy as np
import pytest
import torch
from conftest import tiny_run_config, write_idx

from hybrid_distill.analysis.metrics import uniform_distance
from hybrid_distill.config import from_dict
from hybrid_distill.files import load_model, save_model_file
from hybrid_distill.models.attention import attention_logits
from hybrid_distill.models.load import create_vit
from hybrid_distill.models.tokens import embed_tokens
from hybrid_distill.study.controlled import make_controlled
from hybrid_distill.study.curve import head_distances
from hybrid_distill.trainer import train

VIT = dict(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4)  # 7 x 7 patches, head width 16
LOCAL_TO_FAR = [4.0, 1.0, 0.3, -1.0]  # 0.17, 0.36, 0.67, 1.70 x the uniform distance
# per block: the relation blocks (1, 2) share one order, the others are reversed, so a relation read one block
# off (0 or 3) plants the opposite order
BETAS = [LOCAL_TO_FAR[::-1], LOCAL_TO_FAR, LOCAL_TO_FAR, LOCAL_TO_FAR[::-1]]
POS_SCALE = 3.0  # positions dominate the teacher's LayerNorm: its relations hardly depend on the image
RELATION_BLOCKS = [1, 2]  # blocks -3, -2 of 4


@torch.no_grad()
def patch_logits(model, images) -> list[torch.Tensor]:
    """Every block's q k^T over the patch tokens, (B, H, L, L)."""
    x, out = embed_tokens(model, images), []
    for block in model.blocks:
        out.append(attention_logits(block.attn, block.norm1(x))[:, :, 1:, 1:])
        x = block(x)
    return out


def head_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per head of two (B, H, L, L) relation maps, (H,)."""
    a, b = (t.transpose(0, 1).flatten(1) for t in (a, b))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mechanism")
    rng = np.random.default_rng(0)
    write_idx(tmp / "data", "train", rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), np.arange(256) % 10)
    write_idx(tmp / "data", "t10k", rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), np.arange(32) % 10)
    torch.manual_seed(0)
    teacher = make_controlled(create_vit("vit_tiny_patch16_224", **VIT), BETAS, POS_SCALE)
    save_model_file(teacher, "vit_tiny_patch16_224", VIT, tmp / "teacher.pt", [0.5] * 3, [0.5] * 3)
    cfg = tiny_run_config(
        tmp / "data",
        tmp / "runs",
        **{
            "student.model_kwargs": VIT,
            "masking": {"teacher": None, "strategy": "none"},
            "teachers": {
                "mim": {
                    "arch": "vit_tiny_patch16_224",
                    "weights": str(tmp / "teacher.pt"),
                    "model_kwargs": VIT,
                    "relation_blocks": [-3, -2],
                    "relation_kind": "raw",
                }
            },
            "optim.batch_size": 32,
            "optim.blr": 8e-2,
            "optim.warmup_epochs": 0,
            "train.epochs": 20,
            "train.log_every": 1000,
        },
    )
    student = load_model(str(train(from_dict(cfg))))
    return student.eval(), load_model(str(tmp / "teacher.pt")).eval()


@pytest.mark.slow  # 160 training steps; default suite: the step's relations in test_regression.py
def test_the_student_orders_its_heads_as_the_teacher_does(distilled):
    student, teacher = distilled
    images = torch.randn(16, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    uniform = uniform_distance((7, 7), (4, 4))
    s, t = (torch.tensor(head_distances(m, images))[RELATION_BLOCKS] / uniform for m in (student, teacher))
    for i, block in enumerate(RELATION_BLOCKS):
        order = t[i].argsort()  # the planted pattern of this block, most local head first
        assert order.tolist() == torch.tensor(BETAS[block]).argsort(descending=True).tolist()
        ranks = s[i][order].argsort().argsort().float()  # the student's rank of each head, in the teacher's order
        spearman = 1 - 6 * ((ranks - torch.arange(4.0)) ** 2).sum() / (4 * (16 - 1))
        assert spearman >= 0.8, f"block {block}: student {s[i].tolist()}, teacher {t[i].tolist()}"  # one swap at most
        assert s[i][order[-1]] - s[i][order[0]] > 0.1, f"block {block}: student heads {s[i].tolist()} barely differ"


@pytest.mark.slow  # 160 training steps; default suite: the step's relations in test_regression.py
def test_the_student_relations_correlate_with_the_teachers_head_by_head(distilled):
    student, teacher = distilled
    images = torch.randn(16, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    ls, lt = patch_logits(student, images), patch_logits(teacher, images)
    for block in RELATION_BLOCKS:
        r = head_correlation(ls[block], lt[block])
        assert (r > 0.08).all(), f"block {block}: per-head Pearson {r.tolist()} (untrained: about 0)"
