"""What an open-source release carries: licence text, citation, changelog, an installable wheel."""

import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

import hybrid_distill

ROOT = Path(__file__).resolve().parents[1]


def test_licence_is_the_apache_text_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_citation_names_the_paper_and_the_software():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["type"] == "software" and cff["version"] == hybrid_distill.__version__
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("Hybrid Distillation") and paper["year"] == 2024
    assert paper["authors"][0]["family-names"] == "Shi"


def test_changelog_has_an_entry_for_this_version():
    assert f"## {hybrid_distill.__version__}" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"hybrid-distill {hybrid_distill.__version__}" in result.stdout and "wheel ok" in result.stdout
