"""Every document that quotes a study's verdicts says what its headline.json says (study/publish.py)."""

import json
from pathlib import Path

import pytest

from hybrid_distill.study import load_study
from hybrid_distill.study.claims import cells
from hybrid_distill.study.publish import DEMO_COPY, markers, readme_block
from hybrid_distill.study.report import judged

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def published() -> list:
    """(study file, variant) for every shipped study and variant whose report goes into README."""
    found = []
    for path in sorted((ROOT / "configs" / "studies").glob("*.yaml")):
        for variant in [None, *load_study(path).variants]:
            spec = load_study(path, variant=variant)
            if spec.publish is not None and spec.publish.readme == "README.md":
                found.append((path.name, variant))
    return found


def test_every_verdict_block_in_readme_belongs_to_a_shipped_study():
    names = {load_study(ROOT / "configs" / "studies" / f, variant=v).name for f, v in published()}
    in_readme = {line.split(":")[1] for line in README.splitlines() if line.startswith("<!-- verdicts:")}
    assert in_readme == names and names


@pytest.mark.parametrize("study, variant", published())
def test_readme_study_md_and_the_demo_say_the_headlines_verdicts(study, variant, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = load_study(Path("configs/studies") / study, variant=variant)
    out = Path(spec.publish.dir)
    headline = json.loads((out / "headline.json").read_text())
    claims = headline["claims"]
    assert claims and all(c["verdict"] in ("held", "not held", "within noise", "not testable") for c in claims)
    begin, end = markers(spec.name)
    block = begin + README.split(begin, 1)[1].split(end, 1)[0] + end
    assert block == readme_block(spec.name, claims, (out / "study.md").as_posix(), spec.claims.registered)
    md = (out / "study.md").read_text()
    for c in claims:
        assert cells(f"({c['name']}) {c['text']}", f"**{c['verdict']}**", c["why"]) in md
    study = json.loads((out / "study.json").read_text())
    assert study["claims"] == claims
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert judged(spec, study, analysis) == claims  # today's rules on the published numbers give the same
    if spec.publish.demo:
        assert json.loads(DEMO_COPY.read_text()) == headline
