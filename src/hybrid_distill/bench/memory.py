"""`hybrid-distill bench --memory`: the paper's largest setting (Table 1, last row) on one GPU: a ViT-L/16
student distilled from ViT-L/14 CLIP features (at 196 px, the student's 14 x 14 grid) and ViT-L/16 MAE
relations, with activation checkpointing in the student; peak memory per batch until one fails.

    hybrid-distill bench --memory --device cuda --batches 256,512,1024,2048
"""

from .harness import paper_config, write_result
from .sweep import parse, sweep

RANDOM_VITL = {"clip": "vit_large_patch14_clip_quickgelu_224", "mim": "vit_large_patch16_224"}


def main(argv=None) -> int:
    args = parse(argv, prog="hybrid-distill bench --memory", doc=__doc__, batches="256,512,1024,2048")
    overrides = ["student.arch=vit_large_patch16_224", "train.activation_checkpointing=true", *args.overrides]
    cfg = paper_config("hybrid_vitb_mae_clip", RANDOM_VITL, overrides, args.smoke)
    result = sweep(cfg, args, "ViT-L/16 student, CLIP ViT-L/14 + MAE ViT-L/16 teachers, activation checkpointing")
    write_result(args.out, {"part": "memory_vitl", **result, "argv": argv})
    return 0
