"""`hybrid-distill study`: aggregation against hand formulas, skip and resume after a crash, bad files."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from hybrid_distill.cli import main
from hybrid_distill.study import StudyError, cell_config, load_study, run_study, t_critical
from hybrid_distill.study import cell as cell_module
from hybrid_distill.study.command import Progress, report_only
from hybrid_distill.trainer import Trainer

# 16 tokens, 3 blocks: the progressive schedule 16 -> 11 -> 7 -> 4 after blocks 0, 1, 2; relations at 0, 1
VIT = {
    "arch": "vit_tiny_patch16_224",
    "model_kwargs": dict(img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=2),
}


def tiny_study(idx_folder, out, **extra) -> dict:
    """Two rows x two seeds on 96 random 28x28 images with shared teachers trained for one epoch."""
    sup = {"weights": "teacher:sup", "features": True}
    study = {
        "name": "tiny",
        "out": str(out),
        "seeds": [0, 1],
        "reference": "hybrid",
        "base": {
            "data": {
                "dataset": "fashion_mnist",
                "path": str(idx_folder),
                "img_size": 28,
                "num_workers": 0,
                "limit": 48,
            },
            "student": {**VIT, "drop_path": 0.1},
            "optim": {"batch_size": 16, "warmup_epochs": 1},
            "train": {"epochs": 1, "log_every": 1, "progress": False, "tensorboard": False},
        },
        "teachers": {
            "sup": {"kind": "supervised", "images": 48, "epochs": 1, "batch": 16},
            "mae": {"kind": "mae", "images": 48, "epochs": 1, "batch": 16},
        },
        "rows": {
            "hybrid": {
                "teachers": {"sup": sup, "mim": {"weights": "teacher:mae", "relation_blocks": [-3, -2]}},
                "masking": {"teacher": "mim"},
            },
            "distill_sup": {"teachers": {"sup": sup}, "masking.teacher": None},
        },
        "evaluate": {"train_images": 64, "test_images": 32, "heldout_images": 32},
        "analysis": {"images": 8},
    }
    study.update(extra)
    return study


def cells(out, by_seed: bool = True) -> dict:
    """{(row, 'seedN'): cell.json} of the finished trainings (by_seed=False: keyed by directory, seedN-KEY)."""
    found = {(p.parent.parent.name, p.parent.name): json.loads(p.read_text()) for p in out.glob("cells/*/*/cell.json")}
    return {(row, name.split("-")[0] if by_seed else name): c for (row, name), c in found.items()}


def hand_interval(values: list[float], t: float) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, mean - t * std / math.sqrt(n), mean + t * std / math.sqrt(n)


def test_t_critical_matches_closed_forms_and_tables():
    assert t_critical(1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)  # Cauchy quantile
    assert t_critical(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), rel=1e-9)
    assert t_critical(10) == pytest.approx(2.228, abs=5e-4)  # two-sided 95% tables
    assert t_critical(30) == pytest.approx(2.042, abs=5e-4)
    assert t_critical(10_000) == pytest.approx(1.960, abs=1e-3)


def test_head_spread_is_the_population_std_of_the_heads_distances():
    assert cell_module.head_spread([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(2.0)  # mean 5
    assert cell_module.head_spread([3.0, 3.0, 3.0]) == 0.0  # heads alike: no spread
    assert cell_module.head_spread([1.0, 3.0]) == pytest.approx(1.0)  # over H, not H - 1 (that gives sqrt 2)


def test_two_rows_two_seeds_aggregate_to_hand_computed_intervals(idx_folder, tmp_path):
    out = tmp_path / "study"
    spec = load_study(tiny_study(idx_folder, out))
    result = run_study(spec, log=lambda _: None)
    found = {(row, f"seed{s}"): cell_module.finished_cell(spec, row, s) for row in spec.rows for s in spec.seeds}
    assert set(found) == set(cells(out))
    assert sorted(found) == [(row, f"seed{s}") for row in ("distill_sup", "hybrid") for s in (0, 1)]
    t1 = 12.7062047  # t(0.975, 1), two seeds
    for row in ("hybrid", "distill_sup"):
        for metric in ("knn/top1", "linear/top1", "nmi/L3", "distance/L2", "train/loss"):
            values = [found[(row, f"seed{s}")]["metrics"][metric] for s in (0, 1)]
            mean, std, lo, hi = hand_interval(values, t1)
            got = result["rows"][row][metric]
            assert got["n"] == 2 and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
            assert got["ci95"] == pytest.approx([lo, hi])
    d = [
        found[("distill_sup", f"seed{s}")]["metrics"]["knn/top1"] - found[("hybrid", f"seed{s}")]["metrics"]["knn/top1"]
        for s in (0, 1)
    ]
    mean, std, lo, hi = hand_interval(d, t1)
    diff = result["paired"]["distill_sup"]["knn/top1"]
    assert diff["mean"] == pytest.approx(mean) and diff["ci95"] == pytest.approx([lo, hi])
    assert "hybrid" not in result["paired"]
    # loss parts read under whatever names the runs log; provenance with every cell
    assert {"train/loss", "train/sup/feat"} <= set(result["rows"]["hybrid"])
    assert any(k.startswith("train/mim/rel") for k in result["rows"]["hybrid"])
    assert found[("hybrid", "seed0")]["provenance"]["git_sha"] and found[("hybrid", "seed0")]["config"]["seed"] == 0
    teacher = result["teachers"]["sup"]
    assert teacher["bank"] == 48 and teacher["heldout"] == 32 and teacher["split_seed"] == 0
    text = (out / "study.md").read_text()
    assert "| distill_sup |" in text and "Student t" in text and "4 of 4 cells" in text
    for name in ("distance.png", "nmi.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow  # default suite: test_two_rows_two_seeds_...; a resumed run in test_train.py
def test_killed_mid_study_skips_finished_cells_and_resumes_the_interrupted_one(idx_folder, tmp_path, monkeypatch):
    out = tmp_path / "study"
    study = random_teacher_study(idx_folder, out)
    study["base"]["data"]["limit"] = 64  # 4 steps a cell
    study["base"]["train"]["ckpt_every_steps"] = 1
    spec = load_study(study)
    real_after_step = Trainer.after_step
    trained = []

    def crash_in_second_cell(self, log, parts, lr, epoch):
        real_after_step(self, log, parts, lr, epoch)
        if len(trained) == 2 and self.step == 2:
            raise KeyboardInterrupt  # the process dies mid-cell, after the step-2 checkpoint

    def counting_train(cfg, resume=None):
        trained.append((cfg.output_dir, cfg.name, resume))
        return real_train(cfg, resume=resume)

    real_train = cell_module.train
    monkeypatch.setattr(cell_module, "train", counting_train)
    monkeypatch.setattr(Trainer, "after_step", crash_in_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, log=lambda _: None)
    assert len(cells(out)) == 1  # the first cell finished, the second did not
    interrupted = cell_module.cell_run(spec, "hybrid", 1)[1]
    assert (interrupted / "checkpoints" / "checkpoint-00000002.pt").is_file()
    n_trained = len(trained)
    partial = report_only(spec, log=lambda _: None)  # `study --report`: the finished cell, nothing trained
    assert len(trained) == n_trained and (out / "headline.json").is_file()
    assert [r["knn/top1"]["n"] for r in partial["rows"].values() if r] == [1]

    monkeypatch.setattr(Trainer, "after_step", real_after_step)
    trained.clear()
    lines = []
    result = run_study(spec, log=lines.append)
    assert len(trained) == 3  # 4 cells - 1 finished
    steps = [
        json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines() if "loss" in line
    ]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, each step logged once
    assert sum(r["knn/top1"]["n"] for r in result["rows"].values()) == 4
    assert any("3 left" in line and "ETA" in line for line in lines)


def test_eta_is_the_median_cell_time_times_the_cells_left():
    progress = Progress(total=6, finished=[{"seconds": 100.0}])
    assert progress.line("x").endswith("(1 done, 5 left, ETA 8m20s)")  # the recorded cell until one is timed here
    for seconds in (300.0, 1500.0, 320.0):  # one cell slowed (a paused CPU) does not set the pace
        progress.finish(seconds)
    assert progress.line("x").endswith("(4 done, 2 left, ETA 10m40s)")  # 2 x 320 s


def random_teacher_study(idx_folder, out, **evaluate) -> dict:
    study = tiny_study(idx_folder, out, teachers={}, evaluate={"test_images": 16, "linear": False, **evaluate})
    for row in study["rows"].values():  # random teachers: these tests are about the cells, not the teachers
        for teacher in row["teachers"].values():
            teacher.update(weights="random", **VIT)
    return study


@pytest.mark.slow  # default suite: test_a_cells_key_ignores_where_it_writes_and_how_it_logs
def test_cells_are_keyed_by_content_a_changed_evaluation_only_evaluates(idx_folder, tmp_path, monkeypatch):
    out = tmp_path / "study"
    study = random_teacher_study(idx_folder, out)
    study["seeds"] = [0]
    run_study(load_study(study), log=lambda _: None)
    before = cells(out, by_seed=False)
    calls = []
    monkeypatch.setattr(cell_module, "train", lambda cfg, resume=None: calls.append("train"))
    for name in ("knn_classify", "linear_probe", "analyze_main"):
        real = getattr(cell_module, name)
        monkeypatch.setattr(cell_module, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    study["evaluate"]["linear"] = True  # a new protocol: only it runs, on the trained students
    result = run_study(load_study(study), log=lambda _: None)
    assert calls == ["linear_probe"] * 2  # two cells; neither training nor k-NN nor analysis again
    assert cells(out, by_seed=False) == before  # cell.json (the training's record, its time) untouched
    spec = load_study(study)
    finished = {row: cell_module.finished_cell(spec, row, 0) for row in spec.rows}
    assert all("linear/top1" in c["metrics"] for c in finished.values())
    assert {r["linear/top1"]["n"] for r in result["rows"].values()} == {1}
    calls.clear()
    study["evaluate"]["linear"] = False  # off and on again: the stored linear probe is read back
    run_study(load_study(study), log=lambda _: None)
    study["evaluate"]["linear"] = True
    run_study(load_study(study), log=lambda _: None)
    assert calls == []
    study["analysis"]["images"] = 4  # new analysis settings: analysed again beside the old, still not trained
    run_study(load_study(study), log=lambda _: None)
    assert calls == ["analyze_main"] * 2 and len(list(out.glob("cells/*/*/results/analysis-*/analysis.json"))) == 4
    monkeypatch.undo()
    study["base"]["optim"]["batch_size"] = 8  # a new training config is another student in another directory
    run_study(load_study(study), log=lambda _: None)
    after = cells(out, by_seed=False)
    assert len(after) == 4 and all(after[key] == cell for key, cell in before.items())


def test_a_retrained_teacher_is_another_cell_and_report_writes_nothing(idx_folder, tmp_path):
    from hybrid_distill.study.cell import cell_run

    out = tmp_path / "study"
    teacher = tmp_path / "sup.pt"
    study = random_teacher_study(idx_folder, out)
    study["seeds"], study["rows"], study["reference"] = [0], {"distill_sup": study["rows"]["distill_sup"]}, None
    study["rows"]["distill_sup"]["teachers"]["sup"]["weights"] = str(teacher)
    from hybrid_distill.files import save_model_file
    from hybrid_distill.models.load import create_vit

    save_model_file(create_vit(VIT["arch"], **VIT["model_kwargs"]), VIT["arch"], VIT["model_kwargs"], teacher)
    spec = load_study(study)
    run_study(spec, log=lambda _: None)
    first_dir = cell_run(spec, "distill_sup", 0)[1]
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "cells" in p.parts}
    assert report_only(spec, log=lambda _: None)["rows"]["distill_sup"]["knn/top1"]["n"] == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "cells" in p.parts} == files
    torch.manual_seed(1)
    save_model_file(create_vit(VIT["arch"], **VIT["model_kwargs"]), VIT["arch"], VIT["model_kwargs"], teacher)
    assert cell_run(spec, "distill_sup", 0)[1] != first_dir  # the same row of another teacher file
    assert cell_module.finished_cell(spec, "distill_sup", 0) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": {}}, "no rows"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"reference": "nope"}, "'nope'"),
        ({"rows": {"a": {"from": "b"}, "b": {"from": "a"}}, "reference": None}, "loops"),
        ({"rows": {"a": {"optim": {"nope": 1}}}, "reference": None}, "nope"),
        (
            {"rows": {"a": {"teachers": {"t": {"weights": "teacher:x", "features": True}}}}, "reference": None},
            "no shared teacher",
        ),
        ({"base": {"from": "configs/nope.yaml"}}, "not found"),
        ({"teachers": {"t": {"kind": "contrastive"}}}, "kind"),
        ({"teachers": {"t": {"kind": "supervised", "pos_embed": "sincos"}}}, "pos_embed"),
        ({"evaluate": {"finetune": {"epochs": 1, "nope": 2}}}, "nope"),
        ({"evaluate": {"finetune": {"epochs": 1, "eval_every": -1}}}, "eval_every must be"),  # before any training
    ],
)
def test_bad_study_files_end_in_one_line_with_exit_code_2(idx_folder, tmp_path, capsys, change, message):
    study = {**tiny_study(idx_folder, tmp_path / "out"), **change}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_row_from_and_dotted_keys_compose_over_the_base(idx_folder, tmp_path):
    study = tiny_study(
        idx_folder,
        tmp_path,
        rows={
            **tiny_study(idx_folder, tmp_path)["rows"],
            "no_mask": {"from": "hybrid", "masking.strategy": "none", "teachers.mim.weight": 0.0},
        },
    )
    cfg = cell_config(load_study(study), "no_mask", 1)
    assert cfg.masking.teacher == "mim" and cfg.masking.strategy.value == "none" and cfg.seed == 1
    assert cfg.teachers.mim.weight == 0.0 and cfg.teachers.mim.relation_blocks == [-3, -2]
    assert cfg.teachers.sup.weights.endswith("teachers/sup.pt") and cfg.teachers.sup.arch == VIT["arch"]
    assert cfg.teachers.sup.model_kwargs == VIT["model_kwargs"] and cfg.optim.batch_size == 16


def test_smoke_overrides_apply_and_write_elsewhere(idx_folder, tmp_path):
    study = tiny_study(idx_folder, tmp_path / "s", smoke=["seeds=[0]", "only=[hybrid]"])
    spec = load_study(study, smoke=True)
    assert list(spec.seeds) == [0] and list(spec.only) == ["hybrid"] and spec.out.endswith("s-smoke")
    with pytest.raises(StudyError, match="only"):
        load_study(study, ["only=[distill_sup]"], smoke=True)  # the reference row would not run


def test_shipped_study_resolves_every_row_and_its_smoke_version():
    full = load_study("configs/studies/fashion_mnist_196.yaml")
    rows = {row: cell_config(full, row, 0) for row in full.rows}
    assert {
        "distill_sup",
        "distill_mae",
        "hybrid",
        "hybrid_no_mask",
        "hybrid_random_mask",
        "hybrid_alpha0",
        "hybrid_scaled",
    } <= set(rows) and len(full.seeds) >= 3
    assert rows["hybrid"].student.model_kwargs.patch_size == 2  # 14 x 14 = 196 tokens
    assert rows["hybrid_alpha0"].teachers.mim.weight == 0 and rows["hybrid_alpha0"].masking.teacher == "mim"
    assert {
        rows["hybrid"].teachers.mim.relation_kind.value,
        rows["hybrid_scaled"].teachers.mim.relation_kind.value,
    } == {"raw", "scaled"}
    smoke = load_study("configs/studies/fashion_mnist_196.yaml", smoke=True)
    assert cell_config(smoke, "hybrid", 1).data.limit == 256 and smoke.out.endswith("-smoke")


@pytest.mark.parametrize("path", ["configs/studies/locality.yaml", "configs/studies/fashion_mnist_49.yaml"])
def test_a_smoke_run_never_shares_the_real_teachers(path):
    real, smoke = load_study(path), load_study(path, smoke=True)
    assert real.teachers_dir and smoke.teachers_dir == real.teachers_dir + "-smoke"  # else refused or mixed up


@pytest.mark.parametrize("path", sorted(Path("configs/studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_smoke_run_trains_every_teacher_small_in_every_variant(path):
    """Smoke runs share one teachers-smoke folder per teachers_dir: a teacher left at full size there takes hours
    and makes another study's smoke recipe of it refused."""
    for variant in [None, *load_study(path).variants]:
        spec = load_study(path, variant=variant, smoke=True)
        for name, t in spec.teachers.items():
            assert t.kind.value == "controlled" or (t.images <= 256 and t.epochs <= 1), (variant, name)


def test_the_49_token_study_judges_every_claim_with_the_mae_teacher_that_has_local_heads():
    spec = load_study("configs/studies/fashion_mnist_49.yaml")
    locality = load_study("configs/studies/locality.yaml", variant="mae_m25")
    assert spec.teachers_dir == locality.teachers_dir and spec.teachers.mae_m25 == locality.teachers.mae_m25
    assert list(spec.claims.judge) == ["a", "b", "c", "d", "e"] and spec.claims.mae_teacher == "mae_m25"
    for row in ("hybrid", "hybrid_alpha0", "hybrid_no_mask", "distill_sup"):  # the same cells, so the same keys
        assert cell_config(spec, row, 1).teachers == cell_config(locality, row, 1).teachers, row
        assert cell_config(spec, row, 1).student == cell_config(locality, row, 1).student, row
    assert cell_config(spec, "distill_mae", 0).teachers.mae.weights.endswith("mae_m25.pt")


def test_alpha0_keeps_the_mae_teacher_picking_tokens(idx_folder, tmp_path):
    from conftest import tiny_run_config

    from hybrid_distill.build import build_models
    from hybrid_distill.config import from_dict
    from hybrid_distill.losses import distill_losses

    cfg = from_dict(tiny_run_config(idx_folder, tmp_path, **{"teachers.mim.weight": 0.0}))
    student, teachers, _ = build_models(cfg)
    pixels = torch.rand(2, 3, 28, 28)
    targets = teachers(pixels)
    keep = targets.keep  # (B, K): 49 -> 34 -> 23 -> 16 after the MAE teacher's selection blocks
    assert keep.shape == (2, 16) and set(targets.relations) == {"mim"} and set(targets.features) == {"sup"}
    parts = distill_losses(student(pixels, keep), targets, {"sup": 1.0, "mim": 0.0}, 2.0)
    assert all(v.item() == 0 for k, v in parts.items() if k.startswith("mim/")) and parts["loss"].item() > 0


def test_a_teacher_weaker_than_pixels_stops_the_study(tmp_path):
    from hybrid_distill.study.teachers import require_beats_pixels

    require_beats_pixels("sup", {"knn_top1": 81.0, "pixels_knn_top1": 80.1}, tmp_path / "sup.pt")
    with pytest.raises(StudyError, match="does not beat raw pixels"):
        require_beats_pixels("sup", {"knn_top1": 74.8, "pixels_knn_top1": 80.1}, tmp_path / "sup.pt")


def test_a_shared_teacher_of_another_recipe_is_refused_not_reused(idx_folder, tmp_path):
    from hybrid_distill.study.spec import base_config
    from hybrid_distill.study.teachers import build_teacher, recipe_record

    spec = load_study(tiny_study(idx_folder, tmp_path / "out"))
    path = tmp_path / "out" / "teachers" / "sup.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")  # a finished teacher file ...
    record = recipe_record(spec, "sup", base_config(spec))
    path.with_suffix(".recipe.json").write_text(json.dumps(record))
    assert build_teacher(spec, "sup", base_config(spec), log=lambda line: None) == path  # ... same recipe: reused
    changed = load_study(tiny_study(idx_folder, tmp_path / "out"), ["teachers.sup.epochs=3"])
    with pytest.raises(StudyError, match="teacher sup: .*sup.pt was trained with another recipe"):
        build_teacher(changed, "sup", base_config(changed))


def test_an_mae_teacher_with_sincos_positions_keeps_them_fixed_and_is_another_recipe(idx_folder, tmp_path):
    from hybrid_distill.files import load_model
    from hybrid_distill.models.decoder import sincos_2d
    from hybrid_distill.study.spec import base_config
    from hybrid_distill.study.teachers import build_teacher, recipe_record

    spec = load_study(tiny_study(idx_folder, tmp_path / "out"), ["teachers.mae.pos_embed=sincos"])
    path = build_teacher(spec, "mae", base_config(spec), log=lambda line: None)
    pos = load_model(str(path)).pos_embed
    assert torch.equal(pos, sincos_2d(32, (4, 4)))  # MAE's fixed positions, untouched by its training
    learned = load_study(tiny_study(idx_folder, tmp_path / "out"))
    assert "pos_embed" not in recipe_record(learned, "mae", base_config(learned))["teacher"]  # older records hold
    with pytest.raises(StudyError, match="another recipe"):
        build_teacher(learned, "mae", base_config(learned))
    shipped = load_study("configs/studies/fashion_mnist_196.yaml")  # lists in the recipe (crop_scale)
    assert recipe_record(shipped, "sup", base_config(shipped))["teacher"]["crop_scale"] == [0.8, 1.0]


def test_distance_figure_draws_uniform_attention(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from hybrid_distill.study.figures import layer_figure

    shown = []
    monkeypatch.setattr(plt, "close", shown.append)
    rows = {"hybrid": [{"mean": 14.5, "ci95": [14.4, 14.6], "n": 3}, {"mean": 14.4, "ci95": None, "n": 3}]}
    layer_figure(rows, {"mae": [14.3, 14.2]}, "distance", "note", tmp_path / "d.png", uniform=14.56)
    labels = [line.get_label() for line in shown[0].axes[0].lines]
    assert "uniform attention (14.56)" in labels and "teacher mae" in labels


def test_study_takes_overrides_after_its_flags_and_names_a_folders_split(idx_folder, tmp_path, capsys):
    study = tiny_study(idx_folder, tmp_path / "out")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path), "--report", "seeds=[0]", "evaluate.data=/data/folder"]) == 0
    assert "0 of 2 cells finished" in capsys.readouterr().out
    spec = load_study(study, ["evaluate.data=/data/folder"])
    from hybrid_distill.study.report import markdown

    result = {
        "rows": {"hybrid": {"knn/top1": {"mean": 1.0, "std": None, "ci95": None, "n": 1}}},
        "paired": {},
        "reference": "hybrid",
        "provenance": {"git_sha": "x", "packages": {"torch": "t", "timm": "m"}, "device": "cpu"},
        "cells": {},
    }
    assert "Top-1 accuracy (%) on /data/folder/val (the evaluation split)" in markdown(spec, result, {}, 2, [])


@pytest.mark.slow  # spawns two worker processes (about 40 s on 2 cores)
def test_two_cells_at_once_in_worker_processes_give_the_same_cells(idx_folder, tmp_path):
    """parallel.py: `--jobs 2` trains cells in spawned workers on one thread each; the cells are those one
    process makes, bit for bit (each cell is seeded and keyed by content)."""
    results = {}
    for jobs in (1, 2):
        study = random_teacher_study(idx_folder, tmp_path / f"jobs{jobs}")
        spec = load_study(study)
        run_study(spec, log=lambda _: None, jobs=jobs, threads=1)
        results[jobs] = {
            (row, s): cell_module.finished_cell(spec, row, s)["metrics"] for row in spec.rows for s in spec.seeds
        }
    assert results[1] == results[2] and len(results[1]) == 4
    with pytest.raises(StudyError, match="at least 1"):
        run_study(load_study(random_teacher_study(idx_folder, tmp_path / "x")), log=lambda _: None, jobs=0)


def test_a_cells_key_ignores_where_it_writes_and_how_it_logs(idx_folder, tmp_path):
    from hybrid_distill.study.cell import cell_run

    study = random_teacher_study(idx_folder, tmp_path / "a")
    key = cell_run(load_study(study), "hybrid", 0)[0].name
    for change in (["base.train.log_every=7"], ["base.data.num_workers=2"], ["base.train.ckpt_every_steps=3"]):
        assert cell_run(load_study(study, change), "hybrid", 0)[0].name == key, change
    assert cell_run(load_study({**study, "out": str(tmp_path / "b")}), "hybrid", 0)[0].name == key
    for change in (["base.optim.blr=1e-3"], ["base.data.limit=32"], ["rows.hybrid.teachers.mim.weight=0.5"]):
        assert cell_run(load_study(study, change), "hybrid", 0)[0].name != key, change
