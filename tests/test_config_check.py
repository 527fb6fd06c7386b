"""The one checker: its table covers every float of the schema, refuses NaN and inf for each through the
command line's override path in one line, and its ranges hold at their bounds exactly."""

import contextlib
import dataclasses
import io
import math
import typing

import pytest
import yaml
from conftest import tiny_run_config

from hybrid_distill import cli
from hybrid_distill.config_check import RANGES, Range, check_flags
from hybrid_distill.config_schema import Config, ConfigError


def float_keys(cls, prefix: str = "") -> list[str]:
    """Dotted keys of every float, optional float or list of floats in a schema dataclass; a dict of
    dataclasses (the teachers) is `name.*`."""
    keys = []
    for f in dataclasses.fields(cls):
        kind, key = typing.get_type_hints(cls)[f.name], f"{prefix}{f.name}"
        args = typing.get_args(kind)
        if dataclasses.is_dataclass(kind):
            keys += float_keys(kind, f"{key}.")
        elif typing.get_origin(kind) is dict and dataclasses.is_dataclass(args[1]):
            keys += float_keys(args[1], f"{key}.*.")
        elif kind is float or float in args:
            keys.append(key)
    return keys


def test_every_float_of_the_schema_has_a_range():
    keys = float_keys(Config)
    assert {"optim.blr", "optim.betas", "teachers.*.weight", "student.mask_recon.ratio"} <= set(keys)
    assert [k for k in keys if k not in RANGES] == []


def nan_and_inf(key: str) -> list[tuple[str, str]]:
    """(override, the key its error names): a list key gets the bad value as its first element."""
    if key == "teachers.*.weight":
        key = "teachers.mim.weight"
    if key in ("data.crop_scale", "optim.betas", "student.mean", "student.std"):
        rest = {"data.crop_scale": [1.0], "optim.betas": [0.95], "student.mean": [0.5, 0.5], "student.std": [1, 1]}
        tail = ",".join(map(str, rest[key]))
        return [(f"{key}=[{bad},{tail}]", f"{key}[0]") for bad in ("nan", "inf", "-inf")]
    return [(f"{key}={bad}", key) for bad in ("nan", "inf", "-inf")]


CASES = [case for key in float_keys(Config) for case in nan_and_inf(key)]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("nan")
    path = d / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(d / "fmnist", d / "runs")))
    return path


@pytest.mark.parametrize("override,key", CASES, ids=[o for o, _ in CASES])
def test_nan_and_inf_end_in_one_config_error_line_naming_the_key(config_file, override, key):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", str(config_file), override, "--print-config"])
    assert code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hybrid-distill train: error: {key}="), lines
    assert "finite" in lines[0] or "must be" in lines[0], lines


@pytest.mark.parametrize(
    "rule, inside, outside",
    [
        (Range(0), [0, 0.0, 5, 1e300], [-1, -1e-12, math.nan, math.inf]),
        (Range(0, low_open=True), [1e-12, 3], [0, 0.0, -1, math.nan, math.inf]),
        (Range(0, 1), [0, 0.5, 1], [-0.1, 1.0000001, math.nan, math.inf, -math.inf]),
        (Range(0, 1, low_open=True, high_open=True), [0.5], [0, 1, math.nan]),
        (Range(0, 2**32, high_open=True), [0, 2**32 - 1], [-1, 2**32]),
        (Range(), [-1e300, 0, 1e300], [math.nan, math.inf, -math.inf]),
    ],
)
def test_a_range_holds_at_its_bounds_and_refuses_nan_and_inf(rule, inside, outside):
    assert [v for v in inside if not rule.holds(v)] == []
    assert [v for v in outside if rule.holds(v)] == []


def test_a_range_reads_as_its_bounds():
    rules = (Range(0), Range(0, low_open=True), Range(0, 1, low_open=True), Range(0, 1, high_open=True), Range())
    assert [str(r) for r in rules] == [">= 0", "> 0", "in (0, 1]", "in [0, 1)", "a finite number"]


def test_a_commands_flags_go_through_the_same_checker():
    table = {"--crop-pct": Range(0, 1, low_open=True), "--k": Range(1)}
    check_flags(type("Args", (), {"crop_pct": None, "k": 20})(), table)  # None: not given
    for crop_pct, k, named in ((math.nan, 20, "--crop-pct=nan"), (0.5, 0, "--k=0"), (math.inf, 1, "--crop-pct=inf")):
        with pytest.raises(ConfigError, match=f"^{named} must be"):
            check_flags(type("Args", (), {"crop_pct": crop_pct, "k": k})(), table)


def test_the_python_api_goes_through_the_same_checker(tmp_path):
    import hybrid_distill
    from hybrid_distill.api import as_config

    with pytest.raises(ConfigError, match=r"^optim\.blr=nan must be a finite number$"):
        as_config({"teachers": {}}, {"optim__blr": float("nan")})
    with pytest.raises(ConfigError, match=r"^RUN=\S*missing\.pt: no such file$"):
        hybrid_distill.export(tmp_path / "missing.pt", "timm", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_img_size_must_be_the_students_input_size_unless_it_takes_any(idx_folder, tmp_path):
    from hybrid_distill.config import from_dict

    values = tiny_run_config(idx_folder, tmp_path, **{"data.img_size": 56})
    with pytest.raises(ConfigError, match=r"^data\.img_size=56 does not match the student's input size 28x28 .*"):
        from_dict(values)
    values["student"]["model_kwargs"]["dynamic_img_size"] = True  # timm resizes its position embeddings
    assert from_dict(values).data.img_size == 56


def test_the_systems_device_and_kernel_folders_take_no_output_but_its_ram_disk_does(tmp_path):
    from pathlib import Path

    from hybrid_distill.validate import is_system_folder, writable_dir

    assert is_system_folder(Path("/dev")) and is_system_folder(Path("/proc/self")) and is_system_folder(Path("/sys"))
    assert not is_system_folder(Path("/dev/shm")) and not is_system_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"^--out=/dev/full\.pth: /dev "):  # root may write there: refused anyway
        writable_dir("--out", "/dev/full.pth")
