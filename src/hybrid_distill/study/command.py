"""`hybrid-distill study STUDY.yaml [key=value ...] [--smoke]`: rows x seeds, trained, evaluated, analysed.

Shared teachers are built first, then every (row, seed) cell in turn; finished cells are skipped and
an interrupted one resumes where it stopped, so running the same command again continues a study.
After each cell, OUT/study.json, OUT/study.md and the per-layer figures are rewritten from every
finished cell.
"""

import argparse
import json
import statistics
import sys

import torch
from omegaconf import DictConfig

from ..guards import StopTraining
from .cell import analyse, finished_cell
from .evaluation_data import evaluation_data
from .parallel import default_jobs, run_cells
from .publish import publish
from .report import write_report
from .spec import StudyError, base_config, cell_config, load_study, run_rows, teacher_file
from .teachers import build_teacher, build_teachers, teacher_analysis_dir, used_teachers


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """'cells done, cells left, ETA' from the median time of the cells timed so far (a median: one cell slowed by
    a paused or shared CPU does not inflate the estimate for every cell after it)."""

    def __init__(self, total: int, finished: list[dict]):
        self.total, self.done = total, len(finished)
        self.timed = [c["seconds"] for c in finished]  # recorded cells until this session times its own
        self.session: list[float] = []

    def finish(self, seconds: float) -> None:
        self.done += 1
        self.session.append(seconds)

    def line(self, what: str) -> str:
        left = self.total - self.done
        times = self.session or self.timed
        eta = duration(statistics.median(times) * left) if times and left else ("0m00s" if not left else "unknown")
        return f"[study] {what} ({self.done} done, {left} left, ETA {eta})"


def cells_of(spec: DictConfig) -> list[tuple[str, int]]:
    return [(row, seed) for row in run_rows(spec) for seed in spec.seeds]


def run_study(spec: DictConfig, log=print, jobs: int = 1, threads: int | None = None) -> dict:
    """Every cell of the study (skipping finished ones), `jobs` at a time in worker processes (parallel.py;
    the command's default is one per core) on `threads` torch threads each (None: as torch is), then the
    aggregate; returns study.json's content."""
    if jobs < 1 or threads is not None and threads < 1:
        raise StudyError(f"--jobs {jobs} / --threads {threads}: each must be at least 1")
    cells = cells_of(spec)
    for row, seed in cells:  # every row's config is checked before any work
        cell_config(spec, row, seed)
    data = evaluation_data(spec)
    teachers = build_teachers(spec, data[1].dataset, log)
    teacher_analysis = (
        analyse([t["file"] for t in teachers.values()], spec, data[0], teacher_analysis_dir(spec, teachers))
        if teachers
        else None
    )
    done = {cell: finished_cell(spec, *cell) for cell in cells}
    todo = [cell for cell in cells if not done[cell]]
    progress = Progress(len(cells), [c for c in done.values() if c])
    log(
        progress.line(
            f"{spec.name}: {len(run_rows(spec))} rows x {len(spec.seeds)} seeds in {spec.out}, "
            f"{jobs} cell(s) at a time on {threads or torch.get_num_threads()} thread(s) each"
        )
    )
    result = None
    for row, seed, cell, seconds in run_cells(spec, todo, data, jobs, threads):
        done[(row, seed)] = cell
        progress.finish(seconds)
        log(progress.line(f"cell {row} seed {seed}: finished in {duration(seconds)}"))
        row_done = all(done[(row, s)] for s in spec.seeds)  # figures once a row is complete: savefig is slow
        result = write_report(
            spec, [c for c in done.values() if c], teachers, teacher_analysis, len(cells), figures=row_done
        )
    if result is None:
        result = write_report(spec, [c for c in done.values() if c], teachers, teacher_analysis, len(cells))
    log(f"[study] wrote {spec.out}/study.json, study.md and {len(result['figures'])} figures")
    return result


def report_only(spec: DictConfig, log=print) -> dict:
    """study.json, study.md, headline.json and the figures from the cells finished so far; nothing is
    trained (the shared teachers' checks and analysis are read from their files, when there)."""
    cells = cells_of(spec)
    done = [c for c in (finished_cell(spec, *cell) for cell in cells) if c]
    teachers = {}
    for name in used_teachers(spec):
        check = teacher_file(spec, name).with_suffix(".check.json")
        if check.is_file():
            teachers[name] = {"file": str(teacher_file(spec, name)), **json.loads(check.read_text())}
    path = teacher_analysis_dir(spec, teachers) / "analysis.json" if teachers else None
    analysis = json.loads(path.read_text()) if path and path.is_file() else None
    result = write_report(spec, done, teachers, analysis, len(cells))
    log(
        f"[study] {len(done)} of {len(cells)} cells finished; wrote {spec.out}/study.json, study.md, headline.json "
        f"and {len(result['figures'])} figures"
    )
    return result


def teachers_only(spec: DictConfig, names: list[str], log=print) -> None:
    unknown = [n for n in names if n not in spec.teachers]
    if unknown:
        raise StudyError(f"--teacher {unknown[0]}: no such shared teacher; teachers: {', '.join(spec.teachers)}")
    base = base_config(spec)
    for name in names:
        log(f"[study] teacher {name}: {build_teacher(spec, name, base, log)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hybrid-distill study", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="study YAML (see configs/studies/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the study file, e.g. seeds=[0,1] only=[hybrid]")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="apply the study's own `smoke` overrides (a minutes-long version) and write to OUT-smoke",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="only rewrite the report from the cells finished so far (trains nothing; safe beside a running study)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="cells trained at once, each in its own process (default: one per core on a CPU, 1 with a GPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per cell (default 1: measured fastest "
        "per core, and it does not collapse when the machine is shared; docs/replication/throughput)",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="judge the claims again and write the report to the "
        "study's publish.dir, README's verdict markers and (publish.demo) the demo's copy; trains nothing",
    )
    p.add_argument("--variant", metavar="NAME", help="apply the study file's `variants: NAME` overrides")
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="NAME",
        help="build (or resume) only this shared teacher, then stop; repeat for several. Lets teachers "
        "train in parallel processes before the study itself runs",
    )
    args = p.parse_intermixed_args(argv)  # overrides before or after the flags, as `train` takes them
    spec = load_study(args.study, args.overrides, smoke=args.smoke, variant=args.variant)
    try:
        if args.teacher:
            teachers_only(spec, args.teacher)
        elif args.publish:
            publish(spec)
        else:
            if args.report:
                report_only(spec)
            else:
                run_study(spec, jobs=args.jobs or default_jobs(len(cells_of(spec))), threads=args.threads)
    except StopTraining as stop:
        print(f"hybrid-distill study: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0
