"""Pick the lr of the `fashion_mnist` fine-tune preset on held-out training images, never the test split.

Fine-tunes the demo's Hybrid student and the random-init ViT exactly as demo stage 5 does (the first
10,000 training images, the preset's recipe) at each candidate lr, and scores them on the last 10,000
training images, which no demo stage reads. Needs a finished demo run (`hybrid-distill demo`).

    .venv/bin/python docs/replication/pick_finetune_lr/pick_finetune_lr.py \
        --run runs/demo --out runs/pick_finetune_lr.json
"""

import argparse
import json
from pathlib import Path

import torch

from hybrid_distill.data.fashion_mnist import FashionMNIST
from hybrid_distill.demo.run import DemoConfig, random_init_vit
from hybrid_distill.evaluation.finetune import finetune_eval
from hybrid_distill.files import load_model
from hybrid_distill.provenance import provenance

CANDIDATES = (1e-3, 3e-3, 1e-2, 3e-2)  # at batch 256 (the preset's ref_batch)
HELD_OUT = 10_000  # the last training images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a finished demo run directory")
    p.add_argument("--out", default="runs/pick_finetune_lr.json")
    p.add_argument("--lrs", type=float, nargs="+", default=CANDIDATES, help="candidate lrs at batch 256")
    args = p.parse_args()
    demo = DemoConfig(
        **{
            k: v
            for k, v in json.loads((Path(args.run) / "results.json").read_text())["demo"].items()
            if k in DemoConfig.__dataclass_fields__
        }
    )
    train_ds = FashionMNIST(demo.data_path, "train")
    if demo.train_limit + HELD_OUT > len(train_ds):
        raise SystemExit("the held-out images would overlap the fine-tune ones: lower the demo's train_limit")
    fit = torch.utils.data.Subset(train_ds, range(demo.train_limit))
    held_out = torch.utils.data.Subset(train_ds, range(len(train_ds) - HELD_OUT, len(train_ds)))
    models = {
        "hybrid": lambda: load_model(str(Path(args.run) / "students" / "hybrid")),
        "random_init": lambda: random_init_vit(demo),
    }
    results = {}
    for lr in args.lrs:
        for name, make in models.items():
            r = finetune_eval(
                make(), fit, held_out, "fashion_mnist", epochs=demo.finetune_epochs, batch_size=demo.batch, lr=lr
            )
            results.setdefault(str(lr), {})[name] = r["top1"]
            print(f"lr {lr:.0e}  {name:<12} held-out top-1 {r['top1']:.2f}", flush=True)
    best = max(args.lrs, key=lambda lr: sum(results[str(lr)].values()))
    print(f"best lr (mean held-out top-1 of both models): {best:.0e}")
    Path(args.out).write_text(
        json.dumps({"held_out_top1": results, "best_lr": best, "run": args.run, "provenance": provenance()}, indent=2)
    )


if __name__ == "__main__":
    main()
