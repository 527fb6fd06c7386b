"""Each teacher's share of the loss with and without PHI-S, three teachers of very different feature scales.

    PYTHONPATH=src python docs/phis_shares.py [--steps 60] [--seeds 0 1 2]

The teachers are tiny random ViTs saved as our model files, their final-norm gain and bias set to 0.01, 1
and 100 so their feature targets differ by four orders of magnitude in scale (as real teachers' do: the
reason for PHI-S, Ranzinger et al. 2024, arXiv 2410.01680, figure 2). Targets are the final-normed last
block without whitening; with `normalize=phis` each teacher's targets are PHI-S standardised on the first
10 batches (models/phis.py). The student and data are the demo's (Fashion-MNIST, 28 px, patch 4). Printed:
mean +- std over seeds of each teacher's share of the loss over the steps after the estimation batches.

Measured (60 steps, batch 64, seeds 0 1 2, steps 11-60; AMD EPYC, 2 cores, torch CPU; first on the teachers
branch, a7ee05b, then again on main at 05b00f3 with the same figures):
    normalize=none: small 0.0 +- 0.0%, unit 0.3 +- 0.0%, large 99.7 +- 0.0%
    normalize=phis: small 34.0 +- 2.5%, unit 32.1 +- 1.6%, large 33.9 +- 3.2%
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from hybrid_distill.config import from_dict
from hybrid_distill.files import save_model_file
from hybrid_distill.models.phis import STAT_BATCHES
from hybrid_distill.trainer import Trainer

TINY = dict(img_size=28, patch_size=4, embed_dim=48, depth=6, num_heads=3)
GAINS = {"small": 0.01, "unit": 1.0, "large": 100.0}
DATA = "/usr/share/datasets/fashion-mnist"


def teacher_file(folder: Path, name: str, gain: float, seed: int) -> str:
    from timm import create_model

    torch.manual_seed(1000 + seed * 10 + list(GAINS).index(name))
    model = create_model("vit_tiny_patch16_224", num_classes=0, **TINY)
    with torch.no_grad():
        model.norm.weight.mul_(gain)
        model.norm.bias.normal_(0.0, gain)
    return str(save_model_file(model, "vit_tiny_patch16_224", TINY, folder / f"{name}.pt"))


def run(folder: Path, normalize: str, seed: int, steps: int) -> list[dict]:
    teachers = {
        name: {
            "arch": "vit_tiny_patch16_224",
            "weights": teacher_file(folder, name, gain, seed),
            "model_kwargs": TINY,
            "features": True,
            "whiten": False,
            "normalize": normalize,
        }
        for name, gain in GAINS.items()
    }
    cfg = from_dict(
        {
            "name": f"{normalize}-{seed}",
            "output_dir": str(folder),
            "seed": seed,
            "data": {"dataset": "fashion_mnist", "path": DATA, "img_size": 28, "num_workers": 0, "limit": 6400},
            "student": {"arch": "vit_tiny_patch16_224", "model_kwargs": TINY, "drop_path": 0.1},
            "teachers": teachers,
            "masking": {"teacher": None},
            "optim": {"batch_size": 64, "blr": 1.5e-3, "warmup_epochs": 0.1},
            "train": {"epochs": 1, "max_steps": steps, "log_every": 1, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(cfg)
    trainer.fit()
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def shares(records: list[dict]) -> dict[str, float]:
    after = [r for r in records if r["step"] > STAT_BATCHES]
    return {n: statistics.mean(r[f"{n}/feat"] / r["loss"] for r in after) for n in GAINS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for normalize in ("none", "phis"):
            per_seed = [shares(run(Path(tmp), normalize, s, args.steps)) for s in args.seeds]
            cells = []
            for n in GAINS:
                values = [100 * s[n] for s in per_seed]
                mean, std = statistics.mean(values), statistics.stdev(values)
                cells.append(f"{n} (gain {GAINS[n]:g}) {mean:.1f} +- {std:.1f}%")
            print(f"normalize={normalize}: loss share " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
