"""`hybrid-distill demo`: the whole method on Fashion-MNIST, offline, on a CPU, in minutes.

1. trains a supervised ViT teacher (labels) and an MAE ViT teacher (pixels);
2. distils three students with the training code users run: Hybrid (supervised features + MAE
   relations, MAE-picked tokens) and the single-teacher baselines Distill-Sup and Distill-MAE;
3. reports k-NN and linear-probe accuracy on the test split for raw pixels, a random-init ViT, both
   teachers and every student, a short fine-tune of the Hybrid student against the same recipe from
   random init, and the paper's attention-distance / NMI figures, in results.json and report.md, with
   config, git SHA and package versions.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..analysis.command import main as analyze_main
from ..cli_parser import Parser
from ..config import from_dict
from ..config_schema import ConfigError
from ..data.fashion_mnist import FashionMNIST
from ..data.subset import limit_subset
from ..evaluation.features import extract_features
from ..evaluation.finetune import finetune_eval
from ..evaluation.knn import knn_classify
from ..evaluation.linear import linear_probe
from ..files import load_model
from ..models.load import create_vit
from ..provenance import provenance
from ..trainer import train
from ..validate import writable_dir
from .replication import replication_lines
from .teachers import train_mae_teacher, train_supervised_teacher

FASHION_MEAN, FASHION_STD = [0.2860] * 3, [0.3530] * 3  # Fashion-MNIST train-set pixel statistics


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    data_path: str | None = None  # folder with the IDX files; None: Debian's dataset-fashion-mnist
    seed: int = 0
    train_limit: int = 10000  # training images for teachers and students
    knn_train_limit: int = 10000  # k-NN / linear-probe training bank
    test_limit: int = 10000  # test images evaluated (the first of Fashion-MNIST's 10,000)
    arch: str = "vit_tiny_patch16_224"
    vit_kwargs: dict = field(
        default_factory=lambda: dict(img_size=28, patch_size=4, embed_dim=64, depth=6, num_heads=4)
    )
    batch: int = 128
    teacher_epochs: int = 8
    supervised_blr: float = 2e-3
    mae_epochs: int = 8
    mae_blr: float = 1.5e-3
    student_epochs: int = 5
    student_blr: float = 1e-3
    finetune_epochs: int = 4  # fine-tune preset 'fashion_mnist' on train_limit images
    analysis_images: int = 200
    mean: list = field(default_factory=lambda: list(FASHION_MEAN))
    std: list = field(default_factory=lambda: list(FASHION_STD))

    @classmethod
    def fast(cls, out: str) -> "DemoConfig":
        """A seconds-long version for tests: tiny subset, tiny models, one epoch each."""
        return cls(
            out=out,
            train_limit=256,
            knn_train_limit=256,
            batch=64,
            teacher_epochs=1,
            mae_epochs=1,
            student_epochs=1,
            finetune_epochs=1,
            analysis_images=16,
            test_limit=256,
            vit_kwargs=dict(img_size=28, patch_size=4, embed_dim=48, depth=6, num_heads=3),
        )


def student_config(demo: DemoConfig, name: str, teachers: dict, masking: dict):
    return from_dict(
        {
            "name": name,
            "output_dir": str(Path(demo.out) / "students"),
            "seed": demo.seed,
            "data": {
                "dataset": "fashion_mnist",
                "path": demo.data_path,
                "img_size": 28,
                "limit": demo.train_limit,
                "crop_scale": [0.5, 1.0],
                "num_workers": 0,
            },
            "student": {
                "arch": demo.arch,
                "model_kwargs": demo.vit_kwargs,
                "drop_path": 0.1,
                "mean": demo.mean,
                "std": demo.std,
            },
            "teachers": teachers,
            "masking": masking,
            "optim": {"batch_size": demo.batch, "blr": demo.student_blr, "warmup_epochs": 1},
            "train": {"epochs": demo.student_epochs, "log_every": 10, "keep_checkpoints": 1},
        },
        where=f"demo student '{name}'",
    )


def student_configs(demo: DemoConfig, sup: Path, mae: Path) -> dict:
    common = {"arch": demo.arch, "model_kwargs": demo.vit_kwargs}
    sup_feat = {**common, "weights": str(sup), "features": True}
    mae_rel = {**common, "weights": str(mae), "relation_blocks": [-3, -2]}
    mae_feat = {**common, "weights": str(mae), "features": True}
    none = {"teacher": None, "strategy": "none"}
    return {
        "hybrid": student_config(
            demo, "hybrid", {"sup": sup_feat, "mae": mae_rel}, {"teacher": "mae", "strategy": "progressive"}
        ),
        "distill_sup": student_config(demo, "distill_sup", {"sup": sup_feat}, none),
        "distill_mae": student_config(demo, "distill_mae", {"mae": mae_feat}, none),
    }


def stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def pixel_features(ds: FashionMNIST, n: int):
    n = min(n, len(ds))
    return torch.from_numpy(ds.images[:n].reshape(n, -1).copy()).float() / 255, torch.from_numpy(ds.labels[:n].copy())


def frozen_evals(train_feats, train_labels, test_feats, test_labels) -> dict:
    """k-NN (DINO: k=20, T=0.07) and a linear probe chosen on held-out training data, same features."""
    knn = knn_classify(train_feats, train_labels, test_feats, test_labels)
    linear = linear_probe(train_feats, train_labels, lambda: (test_feats, test_labels))
    return {"knn": knn, "linear": linear}


def evaluate(models: dict, demo: DemoConfig, train_ds, test_ds) -> dict:
    bank = torch.utils.data.Subset(train_ds, range(min(demo.knn_train_limit, len(train_ds))))
    results = {
        "pixels": frozen_evals(*pixel_features(train_ds, demo.knn_train_limit), *pixel_features(test_ds, len(test_ds)))
    }
    for name, model in models.items():
        results[name] = frozen_evals(*extract_features(model, bank), *extract_features(model, test_ds))
        print(
            f"  {name:<14} k-NN top-1 {results[name]['knn']['top1']:.2f}   "
            f"linear top-1 {results[name]['linear']['top1']:.2f}",
            flush=True,
        )
    return results


def finetune(models: dict, demo: DemoConfig, train_ds, test_ds) -> dict:
    """The Hybrid student against the same recipe from random init : does pre-training help?."""
    subset = limit_subset(train_ds, demo.train_limit)  # the images data.limit gives the students
    out = {}
    for name in ("hybrid", "random_init"):
        out[name] = finetune_eval(
            models[name], subset, test_ds, "fashion_mnist", epochs=demo.finetune_epochs, batch_size=demo.batch
        )
        print(f"  fine-tuned {name:<12} top-1 {out[name]['top1']:.2f}", flush=True)
    return out


def analyze(demo: DemoConfig, out: Path, model_paths: list[str]) -> Path:
    data = f"fashion_mnist:{demo.data_path}" if demo.data_path else "fashion_mnist"
    analyze_main(
        [*model_paths, "--data", data, "--num-images", str(demo.analysis_images), "--out", str(out / "analysis")]
    )
    return out / "analysis"


KINDS = {
    "pixels": "raw pixels",
    "random_init": "random-init ViT",
    "teacher_sup": "teacher (labels)",
    "teacher_mae": "teacher (MAE)",
    "hybrid": "student: Hybrid Distill",
    "distill_sup": "student: Distill-Sup",
    "distill_mae": "student: Distill-MAE",
}
FIGURES = ("distance.png", "distance_plain.png", "nmi.png")


def report(demo: DemoConfig, results: dict, tuned: dict, timings: dict, out: Path, test_ds) -> str:
    rows = [
        f"| {name} | {KINDS.get(name, '')} | {r['knn']['top1']:.2f} | {r['linear']['top1']:.2f} | "
        f"{tuned[name]['top1']:.2f} |"
        if name in tuned
        else f"| {name} | {KINDS.get(name, '')} | {r['knn']['top1']:.2f} | {r['linear']['top1']:.2f} | |"
        for name, r in results.items()
    ]
    prov = provenance()
    text = "\n".join(
        [
            "# hybrid-distill demo: Fashion-MNIST",
            "",
            f"git {prov['git_sha']}, torch {prov['packages']['torch']}, timm {prov['packages']['timm']}, "
            f"{prov['device']}; {demo.train_limit} training images; top-1 (%) on {len(test_ds)} test images: k-NN "
            f"(k=20, T=0.07, {demo.knn_train_limit}-image bank), linear probe (setting chosen on held-out training "
            f"data), fine-tune ({demo.finetune_epochs} epochs, preset fashion_mnist)",
            "",
            "| model | what | k-NN | linear | fine-tune |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Figures (paper section 2): "
            + ", ".join(f"[{f}](analysis/{f})" for f in FIGURES)
            + ", attention maps in analysis/attention_maps_*.png",
            "",
            "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
            "",
            "At this scale (49 tokens, teachers trained for minutes) the demo shows the machinery end to end; "
            "it cannot test the paper's claims. The replication below does, at 196 tokens over three seeds.",
            "",
            *replication_lines(),
        ]
    )
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {"frozen": results, "finetune": tuned, "timings_s": timings, "demo": asdict(demo), "provenance": prov},
            indent=2,
        )
    )
    return text


def run_demo(demo: DemoConfig) -> Path:
    out = Path(demo.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(demo.seed)
    train_ds, test_ds = FashionMNIST(demo.data_path, "train"), FashionMNIST(demo.data_path, "test")
    test_ds.images, test_ds.labels = test_ds.images[: demo.test_limit], test_ds.labels[: demo.test_limit]
    timings, start = {}, time.perf_counter()
    data_cfg = student_config(demo, "teachers", {}, {"teacher": None}).data

    def tick(name):
        nonlocal start
        timings[name], start = time.perf_counter() - start, time.perf_counter()

    subset = limit_subset(train_ds, demo.train_limit)  # the images data.limit gives the students
    stage("1/6 supervised teacher (labels)")
    sup = train_supervised_teacher(demo, data_cfg, subset, out / "teachers" / "teacher_sup.pt")
    tick("teacher_sup")
    stage("2/6 MAE teacher (masked pixel reconstruction)")
    mae = train_mae_teacher(demo, data_cfg, subset, out / "teachers" / "teacher_mae.pt")
    tick("teacher_mae")
    models = {
        "random_init": random_init_vit(demo),
        "teacher_sup": load_model(str(sup)),
        "teacher_mae": load_model(str(mae)),
    }
    paths = [str(sup), str(mae)]
    for name, cfg in student_configs(demo, sup, mae).items():
        stage(f"3/6 student {name}: teachers {list(cfg.teachers)}, masking {cfg.masking.strategy.value}")
        paths.append(str(train(cfg)))
        models[name] = load_model(paths[-1])
        tick(f"student_{name}")
    stage("4/6 frozen evaluation on the test split: k-NN and linear probe")
    results = evaluate(models, demo, train_ds, test_ds)
    tick("frozen_eval")
    stage("5/6 fine-tuning: Hybrid student vs random init")
    tuned = finetune(models, demo, train_ds, test_ds)
    tick("finetune")
    stage("6/6 attention distance and NMI (paper figures 1, 3, 5)")
    analyze(demo, out, paths)
    tick("analysis")
    print("\n" + report(demo, results, tuned, timings, out, test_ds))
    print(f"results: {out / 'results.json'}, {out / 'report.md'}, figures in {out / 'analysis'}")
    return out


def random_init_vit(demo: DemoConfig):
    """The demo's untrained baseline: its ViT seeded with demo.seed, with Fashion-MNIST's mean and std."""
    torch.manual_seed(demo.seed)
    model = create_vit(demo.arch, **demo.vit_kwargs)
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(demo.mean), std=tuple(demo.std))
    return model


def check_args(args) -> None:
    """Output writable and not an earlier demo's (its students' run directories would refuse a fresh
    run after the teachers were trained), and the data present: before any training."""
    writable_dir("--out", args.out)
    students = Path(args.out) / "students"
    if students.is_dir() and any(students.iterdir()):
        raise ConfigError(f"--out {args.out} already holds a demo ({students}): choose another --out")
    FashionMNIST(args.data, "test")  # FileNotFoundError naming the files and the fix


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hybrid-distill demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: Debian's package)")
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke version (tests)")
    args = parser.parse_args(argv)
    check_args(args)
    demo = DemoConfig.fast(args.out) if args.fast else DemoConfig(out=args.out)
    demo.data_path = args.data
    run_demo(demo)
    return 0
