"""`hybrid-distill demo`: the whole method on Fashion-MNIST, offline, on a CPU, in minutes.

1. trains a supervised ViT teacher (labels) and an MAE ViT teacher (pixels);
2. distils three students with the training code users run: Hybrid (supervised features + MAE
   relations, MAE-picked tokens) and the single-teacher baselines Distill-Sup and Distill-MAE;
3. reports k-NN accuracy on the test split for raw pixels, a random-init ViT, both teachers and
   every student, in results.json and report.md, with config, git SHA and package versions.
"""
import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import from_dict, to_dict
from ..data.fashion_mnist import FashionMNIST
from ..evaluation.knn import knn_classify, knn_eval
from ..models.load import create_vit, load_model
from ..provenance import provenance
from ..trainer import train
from .teachers import train_mae_teacher, train_supervised_teacher

FASHION_MEAN, FASHION_STD = [0.2860] * 3, [0.3530] * 3  # Fashion-MNIST train-set pixel statistics


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    data_path: str | None = None  # folder with the IDX files; None: Debian's dataset-fashion-mnist
    seed: int = 0
    train_limit: int = 12000  # training images for teachers and students
    knn_train_limit: int = 10000  # k-NN memory bank (test split: all 10,000)
    arch: str = "vit_tiny_patch16_224"
    vit_kwargs: dict = field(default_factory=lambda: dict(img_size=28, patch_size=4, embed_dim=96, depth=6,
                                                          num_heads=3))
    batch: int = 128
    teacher_epochs: int = 4
    supervised_blr: float = 1e-3
    mae_epochs: int = 6
    mae_blr: float = 1.5e-3
    student_epochs: int = 3
    student_blr: float = 1e-3
    mean: list = field(default_factory=lambda: list(FASHION_MEAN))
    std: list = field(default_factory=lambda: list(FASHION_STD))

    @classmethod
    def fast(cls, out: str) -> "DemoConfig":
        """A seconds-long version for tests: tiny subset, tiny models, one epoch each."""
        return cls(out=out, train_limit=256, knn_train_limit=256, batch=64, teacher_epochs=1, mae_epochs=1,
                   student_epochs=1, vit_kwargs=dict(img_size=28, patch_size=4, embed_dim=48, depth=6, num_heads=3))


def student_config(demo: DemoConfig, name: str, teachers: dict, masking: dict):
    return from_dict({
        "name": name, "output_dir": str(Path(demo.out) / "students"), "seed": demo.seed,
        "data": {"dataset": "fashion_mnist", "path": demo.data_path, "img_size": 28, "limit": demo.train_limit,
                 "crop_scale": [0.35, 1.0], "num_workers": 0},
        "student": {"arch": demo.arch, "model_kwargs": demo.vit_kwargs, "drop_path": 0.1,
                    "mean": demo.mean, "std": demo.std},
        "teachers": teachers, "masking": masking,
        "optim": {"batch_size": demo.batch, "blr": demo.student_blr, "warmup_epochs": 1},
        "train": {"epochs": demo.student_epochs, "log_every": 10, "keep_checkpoints": 1},
    }, where=f"demo student '{name}'")


def student_configs(demo: DemoConfig, sup: Path, mae: Path) -> dict:
    common = {"arch": demo.arch, "model_kwargs": demo.vit_kwargs}
    sup_feat = {**common, "weights": str(sup), "features": True}
    mae_rel = {**common, "weights": str(mae), "relation_blocks": [-3, -2]}
    mae_feat = {**common, "weights": str(mae), "features": True}
    none = {"teacher": None, "strategy": "none"}
    return {
        "hybrid": student_config(demo, "hybrid", {"sup": sup_feat, "mae": mae_rel},
                                 {"teacher": "mae", "strategy": "progressive"}),
        "distill_sup": student_config(demo, "distill_sup", {"sup": sup_feat}, none),
        "distill_mae": student_config(demo, "distill_mae", {"mae": mae_feat}, none),
    }


def stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def pixel_knn(train_ds: FashionMNIST, test_ds: FashionMNIST, limit: int) -> dict:
    flat = lambda ds, n: torch.from_numpy(ds.images[:n].reshape(min(n, len(ds)), -1)).float() / 255
    labels = lambda ds, n: torch.from_numpy(ds.labels[:n])
    result = knn_classify(flat(train_ds, limit), labels(train_ds, limit), flat(test_ds, len(test_ds)),
                          labels(test_ds, len(test_ds)))
    return {"protocol": "knn", **result}


def evaluate(models: dict, demo: DemoConfig, train_ds, test_ds) -> dict:
    bank = torch.utils.data.Subset(train_ds, range(min(demo.knn_train_limit, len(train_ds))))
    results = {"pixels": pixel_knn(train_ds, test_ds, demo.knn_train_limit)}
    for name, model in models.items():
        results[name] = knn_eval(model, bank, test_ds)
        print(f"  k-NN {name:<14} top-1 {results[name]['top1']:.2f}", flush=True)
    return results


def report(demo: DemoConfig, results: dict, timings: dict, out: Path) -> str:
    kinds = {"pixels": "raw pixels", "random_init": "random-init ViT", "teacher_sup": "teacher (labels)",
             "teacher_mae": "teacher (MAE)", "hybrid": "student: Hybrid Distill",
             "distill_sup": "student: Distill-Sup", "distill_mae": "student: Distill-MAE"}
    rows = [f"| {name} | {kinds.get(name, '')} | {r['top1']:.2f} | {r['top5']:.2f} |" for name, r in results.items()]
    prov = provenance()
    text = "\n".join([
        "# hybrid-distill demo: Fashion-MNIST", "",
        f"git {prov['git_sha']}, torch {prov['packages']['torch']}, timm {prov['packages']['timm']}, "
        f"{prov['device']}; {demo.train_limit} training images, k-NN (k=20, T=0.07) on the 10,000 test images",
        "", "| model | what | k-NN top-1 | k-NN top-5 |", "|---|---|---|---|", *rows, "",
        "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""])
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {"results": results, "timings_s": timings, "demo": asdict(demo), "provenance": prov}, indent=2))
    return text


def run_demo(demo: DemoConfig) -> Path:
    out = Path(demo.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(demo.seed)
    train_ds, test_ds = FashionMNIST(demo.data_path, "train"), FashionMNIST(demo.data_path, "test")
    timings, start = {}, time.perf_counter()
    data_cfg = student_config(demo, "teachers", {}, {"teacher": None}).data

    def tick(name):
        nonlocal start
        timings[name], start = time.perf_counter() - start, time.perf_counter()

    subset = torch.utils.data.Subset(train_ds, range(demo.train_limit))
    stage("1/4 supervised teacher (labels)")
    sup = train_supervised_teacher(demo, data_cfg, subset, out / "teachers" / "teacher_sup.pt")
    tick("teacher_sup")
    stage("2/4 MAE teacher (masked pixel reconstruction)")
    mae = train_mae_teacher(demo, data_cfg, subset, out / "teachers" / "teacher_mae.pt")
    tick("teacher_mae")
    models = {"random_init": _random_init(demo), "teacher_sup": load_model(str(sup)), "teacher_mae": load_model(str(mae))}
    for name, cfg in student_configs(demo, sup, mae).items():
        stage(f"3/4 student {name}: teachers {list(cfg.teachers)}, masking {cfg.masking.strategy.value}")
        models[name] = load_model(str(train(cfg)))
        tick(f"student_{name}")
    stage("4/4 evaluation: k-NN on the test split")
    results = evaluate(models, demo, train_ds, test_ds)
    tick("evaluation")
    print("\n" + report(demo, results, timings, out))
    print(f"results: {out / 'results.json'}, {out / 'report.md'}")
    return out


def _random_init(demo: DemoConfig):
    torch.manual_seed(demo.seed)
    model = create_vit(demo.arch, **demo.vit_kwargs)
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=tuple(demo.mean), std=tuple(demo.std))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybrid-distill demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: Debian's package)")
    parser.add_argument("--fast", action="store_true", help="a seconds-long smoke version (tests)")
    args = parser.parse_args(argv)
    demo = DemoConfig.fast(args.out) if args.fast else DemoConfig(out=args.out)
    demo.data_path = args.data
    run_demo(demo)
    return 0
