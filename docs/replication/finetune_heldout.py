"""Fine-tune trained students on held-out training images, never the test split: is a fine-tune budget enough?

Each student (a run directory, e.g. a study cell) is fine-tuned with the `fashion_mnist` preset on the first
--bank training images (the study's students' own) and scored after every epoch on the last --heldout
training images, which no study stage trains on. Prints one line per epoch and writes every record with
provenance.

    .venv/bin/python docs/replication/finetune_heldout.py runs/studies/fashion_mnist_196/cells/hybrid/seed0 \
        --epochs 6 --train-subset 10000 --lrs 1e-2 2e-3 --out runs/finetune_heldout.json
"""

import argparse
import json
import time
from pathlib import Path

from torch.utils.data import Subset

from hybrid_distill.data.fashion_mnist import FashionMNIST
from hybrid_distill.evaluation.finetune import finetune_eval
from hybrid_distill.files import load_model
from hybrid_distill.provenance import provenance


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="trained run directories (study cells)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=5000, help="fine-tune images drawn from the bank")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2], help="lrs at batch 256 (the preset's ref_batch)")
    p.add_argument(
        "--layer-decays",
        type=float,
        nargs="+",
        default=[0.75],
        help="MAE's layer-wise lr decay (the preset's 0.75; ViT-B's 0.65 over 12 blocks is 0.65**2 a block at depth 6)",
    )
    p.add_argument("--bank", type=int, default=10_000, help="the first N training images")
    p.add_argument("--heldout", type=int, default=2000, help="scored on the last N training images")
    p.add_argument("--out", default="runs/finetune_heldout.json")
    args = p.parse_args()
    train_ds = FashionMNIST(args.data, "train")
    if args.bank + args.heldout > len(train_ds):
        raise SystemExit(f"--bank {args.bank} + --heldout {args.heldout} exceed the {len(train_ds)} training images")
    bank = Subset(train_ds, range(args.bank))
    held_out = Subset(train_ds, range(len(train_ds) - args.heldout, len(train_ds)))
    records = []
    for run in args.runs:
        for lr, decay in [(lr, decay) for lr in args.lrs for decay in args.layer_decays]:
            start, tag = time.perf_counter(), f"{run} lr {lr:.0e} layer decay {decay:g}"

            def log(line, tag=tag, start=start):
                print(f"{tag}: {line} ({time.perf_counter() - start:.0f} s)", flush=True)

            r = finetune_eval(
                load_model(run),
                bank,
                held_out,
                "fashion_mnist",
                epochs=args.epochs,
                train_subset=args.train_subset,
                seed=0,
                lr=lr,
                layer_decay=decay,
                log=log,
            )
            records.append(
                {
                    "run": run,
                    "lr": lr,
                    "layer_decay": decay,
                    "heldout_top1": r["top1"],
                    "per_epoch": [e.get("test_top1") for e in r["epochs"]],
                }
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "records": records, "provenance": provenance()}, indent=2)
    )


if __name__ == "__main__":
    main()
