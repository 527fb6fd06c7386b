"""Versions stated once: torch / torchvision pinned in pyproject.toml's `tested` extra, which scripts/setup.sh
installs; the timm floor that scripts/check_timm_minimum.sh reads from pyproject.toml, run by .ci/run."""

import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(lines: list[str]) -> dict[str, Requirement]:
    return {r.name: r for r in map(Requirement, lines)}


def test_the_tested_extra_pins_torch_and_torchvision_within_the_declared_floors():
    pins = requirements(PROJECT["optional-dependencies"]["tested"])
    floors = requirements(PROJECT["dependencies"])
    assert sorted(pins) == ["torch", "torchvision"]
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{name}: the tested extra pins one version, got {pin}"
        assert floors[name].specifier.contains(spec.version), f"{name} {spec.version} is below {floors[name]}"


def test_setup_installs_the_tested_extra_and_names_no_version_of_its_own():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if re.search(r"pip install .*-e \"\.\[", line)]
    assert len(installs) == 1 and "tested" in re.search(r'"\.\[([\w,]+)\]"', installs[0]).group(1).split(",")
    assert not re.search(r"torch(vision)?==", setup), "setup.sh pins torch itself: read the pin from pyproject.toml"


def test_ci_checks_the_timm_floor_that_pyproject_declares():
    floor = str(next(iter(requirements(PROJECT["dependencies"])["timm"].specifier)))
    script = (ROOT / "scripts" / "check_timm_minimum.sh").read_text()
    read_by_script = re.search(r"sed -n '([^']+)' pyproject.toml", script).group(1)
    found = subprocess.run(["sed", "-n", read_by_script, "pyproject.toml"], cwd=ROOT, capture_output=True, text=True)
    assert floor == f">={found.stdout.strip()}"  # the script tests the version pyproject.toml declares
    ci = [line.split("#")[0] for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert any("scripts/check_timm_minimum.sh" in line for line in ci)
