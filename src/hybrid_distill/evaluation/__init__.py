"""Downstream evaluation of any backbone: weighted k-NN, linear probe, full fine-tuning.

Each `*_eval(model, train_ds, test_ds, ...)` takes a timm ViT and two datasets of (PIL image, label)
and returns a dict with `protocol`, `top1`, `top5` (percent) and the config that produced them.
`protocols.PROTOCOLS` is the table of them that the `eval` command, the API and the study read.
"""

from hybrid_distill.evaluation.features import extract_features
from hybrid_distill.evaluation.finetune import FinetuneConfig, finetune_eval
from hybrid_distill.evaluation.knn import knn_classify, knn_eval
from hybrid_distill.evaluation.linear import ProbeConfig, linear_eval, linear_probe
from hybrid_distill.evaluation.protocols import PROTOCOLS, Protocol, register

__all__ = [
    "extract_features",
    "knn_classify",
    "knn_eval",
    "linear_probe",
    "linear_eval",
    "ProbeConfig",
    "finetune_eval",
    "FinetuneConfig",
    "PROTOCOLS",
    "Protocol",
    "register",
]
