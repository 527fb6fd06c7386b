"""Weighted k-NN classification on frozen features (Wu et al. 2018, as used by DINO, Caron et al. 2021).

Features are L2-normalised; for each test sample the k most cosine-similar training samples vote
for their class with weight exp(sim / T); the class scores are the summed votes. DINO's
`eval_knn.py` uses k=20, T=0.07. Test samples are processed in chunks so that the (chunk, N_train)
similarity matrix stays small.
"""

import torch
import torch.nn.functional as F

from hybrid_distill.evaluation.features import extract_features
from hybrid_distill.provenance import provenance


def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN classifier; a pure function."""
    _check(train_feats, train_labels, test_feats, test_labels, k)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_feats.float(), dim=1)  # (N_train, D)
    correct1 = correct5 = 0
    for start in range(0, len(test_feats), chunk_size):
        scores = knn_scores(
            train,
            train_labels,
            F.normalize(test_feats[start : start + chunk_size].float(), dim=1),
            k,
            temperature,
            num_classes,
        )  # (B, C)
        target = test_labels[start : start + chunk_size].view(-1, 1)  # (B, 1)
        ranked = scores.topk(min(5, num_classes), dim=1).indices  # (B, 5)
        correct1 += (ranked[:, :1] == target).sum().item()
        correct5 += (ranked == target).any(dim=1).sum().item()
    n = len(test_feats)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n}


def knn_scores(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, temperature: float, num_classes: int
) -> torch.Tensor:
    """Unit-norm train (N, D) and test (B, D) -> class scores (B, C): sum over top-k of exp(sim / T)."""
    sim = test @ train.T  # (B, N)
    top_sim, top_idx = sim.topk(min(k, len(train)), dim=1)  # (B, k)
    votes = torch.zeros(len(test), num_classes, dtype=sim.dtype, device=sim.device)
    return votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())


def _check(train_feats, train_labels, test_feats, test_labels, k):
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"features must be (N, D) with the same D; got train {tuple(train_feats.shape)}, "
            f"test {tuple(test_feats.shape)}"
        )
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError(
            "each feature row needs one label: got "
            f"{len(train_feats)}/{len(train_labels)} train and {len(test_feats)}/{len(test_labels)} test"
        )
    if k < 1 or len(train_feats) == 0 or len(test_feats) == 0:
        raise ValueError(
            f"k-NN needs k >= 1 and non-empty splits; got k={k}, "
            f"{len(train_feats)} train and {len(test_feats)} test samples"
        )


def knn_eval(
    model,
    train_ds,
    test_ds,
    pool: str = "cls",
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 256,
    device=None,
    crop_pct: float = 1.0,
    cache_dir=None,
    data_keys: tuple[str, str] | None = None,
) -> dict:
    """k-NN top-1 / top-5 (percent) of a frozen model's features; datasets yield (PIL image, label)."""
    kw = dict(pool=pool, batch_size=batch_size, device=device, crop_pct=crop_pct, cache_dir=cache_dir)
    keys = data_keys or (None, None)
    train_feats, train_labels = extract_features(model, train_ds, data_key=keys[0], **kw)
    test_feats, test_labels = extract_features(model, test_ds, data_key=keys[1], **kw)
    result = knn_classify(train_feats, train_labels, test_feats, test_labels, k, temperature)
    return {
        "protocol": "knn",
        **result,
        "provenance": provenance(),
        "config": {
            "k": k,
            "temperature": temperature,
            "pool": pool,
            "crop_pct": crop_pct,
            "train_size": len(train_feats),
            "test_size": len(test_feats),
            "dim": train_feats.shape[1],
        },
    }
