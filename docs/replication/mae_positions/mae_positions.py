"""Does MAE's fixed sin-cos encoder position embedding give the MAE teacher local attention heads?

Trains the shipped study's MAE teacher twice, with timm's learned positions and with MAE's fixed 2-D
sin-cos ones (`teachers.mae.pos_embed`), on fewer images, and analyses both (attention distance and NMI per
head and layer on test images; no accuracy is read from the test split).

    .venv/bin/python docs/replication/mae_positions/mae_positions.py --images 10000 --epochs 10 --out runs/mae_positions
"""

import argparse
from pathlib import Path

from hybrid_distill.analysis.command import main as analyze_main
from hybrid_distill.study.spec import base_config, load_study
from hybrid_distill.study.teachers import build_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="configs/studies/fashion_mnist_196.yaml")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/mae_positions")
    args = p.parse_args()
    files = []
    for pos in ("learned", "sincos"):
        spec = load_study(
            args.study,
            [
                f"out={args.out}/{pos}",
                f"teachers.mae.pos_embed={pos}",
                f"teachers.mae.images={args.images}",
                f"teachers.mae.epochs={args.epochs}",
            ],
        )
        files.append(str(build_teacher(spec, "mae", base_config(spec))))
    analyze_main(
        [
            *files,
            "--data",
            "fashion_mnist",
            "--split",
            "test",
            "--num-images",
            "200",
            "--map-images",
            "2",
            "--out",
            str(Path(args.out) / "analysis"),
        ]
    )


if __name__ == "__main__":
    main()
