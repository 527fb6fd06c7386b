"""`study FILE --publish`: a study's report copied where readers look, every verdict written from one place.

The study's result (OUT/study.json after `--report`, else the copy already published) is judged again under
claims.py's rules, then written to the study file's `publish.dir` (study.json, study.md, headline.json, the
figures and the teachers' analysis), to README between the study's markers, and, with `publish.demo`, as the
demo's packaged replication.json. Nothing else writes a verdict, so no two documents can disagree.
"""

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from . import claims as paper_claims
from . import curve
from .report import judged, markdown
from .spec import StudyError, run_rows, teacher_file
from .teachers import teacher_analysis_dir

DEMO_COPY = Path(__file__).resolve().parent.parent / "demo" / "replication.json"


def markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- verdicts:{name}:begin (written by `hybrid-distill study --publish`) -->",
        f"<!-- verdicts:{name}:end -->",
    )


def readme_block(name: str, claims: list[dict], link: str, registered: str) -> str:
    """The verdict table README carries: one line per claim and the report it comes from."""
    begin, end = markers(name)
    rows = [paper_claims.cells(f"({c['name']}) {c['text']}", f"**{c['verdict']}**", c["why"]) for c in claims]
    note = f"Rules and protocols fixed {registered}. " if registered else ""
    return "\n".join(
        [
            begin,
            "",
            "| claim | verdict | why |",
            "|---|---|---|",
            *rows,
            "",
            f"{note}Every part with its interval: [{link}]({link}).",
            "",
            end,
        ]
    )


def replace_block(text: str, name: str, block: str, where: Path) -> str:
    begin, end = markers(name)
    if begin not in text or end not in text:
        raise StudyError(
            f"{where} has no `{begin}` ... `{end}` markers: add them where the verdicts of study "
            f"'{name}' belong, then publish again"
        )
    head, rest = text.split(begin, 1)
    return head + block + rest.split(end, 1)[1]


def source(spec: DictConfig) -> tuple[dict, dict, Path]:
    """(study.json content, the shared teachers' analysis, the folder they come from): the fresh report in
    OUT with the analysis of exactly its teacher files (keyed like `--report` finds it), else the copy
    already published with the analysis published beside it."""
    out, published = Path(spec.out), Path(spec.publish.dir)
    if (out / "study.json").is_file():
        result = json.loads((out / "study.json").read_text())
        analysis = (
            teacher_analysis_dir(spec, result.get("teachers", {})) / "analysis.json" if result.get("teachers") else None
        )
        if analysis is None or not analysis.is_file():
            raise StudyError(
                f"{out}/study.json has no analysis of its shared teachers ({analysis}); run the study "
                "(or `--report`) again"
            )
        return result, json.loads(analysis.read_text()), out
    if (published / "study.json").is_file() and (published / "analysis" / "analysis.json").is_file():
        return (
            json.loads((published / "study.json").read_text()),
            json.loads((published / "analysis" / "analysis.json").read_text()),
            published,
        )
    raise StudyError(
        f"nothing to publish: neither {out}/study.json nor {published}/study.json (with "
        "analysis/analysis.json) exists; run the study (or `--report`) first"
    )


def publish_curves(spec: DictConfig, out: Path) -> list[Path]:
    """Each shared teacher's attention-distance curve (study/curve.py), as recorded and drawn."""
    written = []
    for name, t in spec.teachers.items():
        source = teacher_file(spec, name).with_suffix(".curve.json")
        if t.curve_every and source.is_file():
            data = curve.read(source)
            (out / "teachers").mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / "teachers" / source.name)
            title = (
                f"teacher {name} ({t.kind.value}, {t.epochs} epochs, {t.images} images): the most local head "
                f"per layer, epochs 0-{data[-1]['epoch']}"
            )
            written += [out / "teachers" / source.name, curve.plot(data, out / f"{name}_curve.png", title)]
    return written


def publish(spec: DictConfig, log=print) -> dict:
    if spec.publish is None or not spec.publish.dir:
        raise StudyError("the study file has no `publish: {dir: ...}`: say where its report goes")
    out = Path(spec.publish.dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = publish_curves(spec, out)
    if curves and not (Path(spec.out) / "study.json").is_file() and not (out / "study.json").is_file():
        log(f"[study] {spec.name}: no report yet; published the teachers' curves: " + ", ".join(map(str, curves)))
        return {}
    result, analysis, folder = source(spec)
    if spec.claims is not None:
        result["claims"] = judged(spec, result, analysis)
    if folder != out:  # a fresh report: its figures and the teachers' analysis travel with it
        for name in result.get("figures", []):
            shutil.copy2(folder / Path(name).name, out / Path(name).name)
        (out / "analysis").mkdir(exist_ok=True)
        (out / "analysis" / "analysis.json").write_text(json.dumps(analysis, indent=2))
    written = curves
    headline = {**json.loads((folder / "headline.json").read_text()), "claims": result.get("claims", [])}
    total = len(run_rows(spec)) * len(spec.seeds)
    (out / "study.json").write_text(json.dumps(result, indent=2))
    (out / "study.md").write_text(markdown(spec, result, result.get("teachers", {}), total, result.get("figures", [])))
    (out / "headline.json").write_text(json.dumps(headline, indent=2))
    written += [out / "study.json", out / "study.md", out / "headline.json"]
    registered = spec.claims.registered if spec.claims is not None else ""
    if spec.publish.readme:
        readme = Path(spec.publish.readme)
        link = (out / "study.md").as_posix()
        readme.write_text(
            replace_block(
                readme.read_text(), spec.name, readme_block(spec.name, headline["claims"], link, registered), readme
            )
        )
        written.append(readme)
    if spec.publish.demo:
        DEMO_COPY.write_text(json.dumps(headline, indent=2))
        written.append(DEMO_COPY)
    log(f"[study] published {spec.name}: " + ", ".join(str(p) for p in written))
    return headline
