"""Study rows go through the configs' loader: a row may name `base:` config files, `from:` rows still
inherit, and the shipped studies' cells keep their content keys (their directories, study/cell.py)."""

import json
from pathlib import Path

import pytest
import yaml

from hybrid_distill.config import load_config, to_dict
from hybrid_distill.study import StudyError, cell_config, load_study
from hybrid_distill.study.cell import cell_run

ROOT = Path(__file__).parents[1]
KEYS = ROOT / "tests" / "data" / "study_cell_keys.json"  # seed-0 cell directories, recorded before rows took `base:`
TINY = dict(img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=2)


def study(rows: dict, base: dict | None = None) -> dict:
    student = {"arch": "vit_tiny_patch16_224", "model_kwargs": dict(TINY)}
    base = base if base is not None else {"data": {"dataset": "fashion_mnist", "img_size": 28}, "student": student}
    return {"name": "rows", "out": "out", "base": base, "rows": rows}


def teacher(**extra) -> dict:
    return {"arch": "vit_tiny_patch16_224", "weights": "random", "model_kwargs": dict(TINY), **extra}


def test_shipped_study_rows_keep_their_cell_keys(monkeypatch, tmp_path):
    """The key hashes the whole training config: a row resolved differently would be another cell."""
    monkeypatch.chdir(tmp_path)  # teacher paths resolve to no file, as when the keys were recorded
    recorded, seen = json.loads(KEYS.read_text()), set()
    for path in sorted((ROOT / "configs" / "studies").glob("*.yaml")):
        for variant in [None, *load_study(path).variants]:
            name = f"{path.name}:{variant or ''}"
            if name not in recorded:  # a variant added later has no cells to keep yet
                continue
            spec = load_study(path, variant=variant)
            keys = {row: cell_run(spec, row, spec.seeds[0])[1].name for row in spec.rows}
            assert keys == recorded[name], f"{path.name} variant {variant}"
            seen.add(name)
    assert seen == set(recorded), f"recorded studies or variants no longer shipped: {set(recorded) - seen}"


def test_a_row_with_a_base_file_resolves_as_load_config_reads_that_file(tmp_path):
    """The study base, then the file (its own `base:` chain first), then the row's keys."""
    parent = tmp_path / "parent.yaml"
    parent.write_text(yaml.safe_dump({"teachers": {"sup": teacher(features=True)}, "optim": {"blr": 1.0e-3}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"base": "parent.yaml", "masking": {"teacher": None, "strategy": "none"}}))
    spec = load_study(study({"file": {"base": str(child), "optim.warmup_epochs": 2}}))
    cfg = to_dict(cell_config(spec, "file", 0))
    alone = to_dict(load_config(child, ["optim.warmup_epochs=2"]))
    for section in ("teachers", "masking", "optim"):
        assert cfg[section] == alone[section], section
    assert cfg["student"]["model_kwargs"] == TINY  # the study base stays under the file


def test_from_rows_inherit_a_parents_base_files_and_may_add_their_own(tmp_path):
    sup = tmp_path / "sup.yaml"
    sup.write_text(yaml.safe_dump({"teachers": {"sup": teacher(features=True)}, "masking": {"teacher": None}}))
    mim = tmp_path / "mim.yaml"
    mim.write_text(yaml.safe_dump({"teachers": {"mim": teacher(relation_blocks=[-2])}, "masking": {"teacher": "mim"}}))
    rows = {
        "sup": {"base": str(sup)},
        "hybrid": {"from": "sup", "base": [str(mim)], "teachers.mim.weight": 0.5},
    }
    cfg = cell_config(load_study(study(rows)), "hybrid", 0)
    assert list(cfg.teachers) == ["sup", "mim"] and cfg.masking.teacher == "mim"
    assert cfg.teachers.mim.weight == 0.5 and list(cfg.teachers.mim.relation_blocks) == [-2]


@pytest.mark.parametrize(
    "base, message",
    [("nope.yaml", "rows.file.base: config file not found: nope.yaml"), (3, "must be a config file or a list")],
)
def test_a_bad_row_base_fails_in_one_line_naming_the_row(base, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=message):
        cell_config(load_study(study({"file": {"base": base}})), "file", 0)
