"""A study cell's training speed at 1 and 2 threads, one cell or two at once (issue: study throughput).

Trains the locality study's `hybrid` cell (controlled variant: its teachers are built in seconds, the step is
the same as with the MAE teacher) for a fixed number of steps in fresh processes and reads the trainer's own
img/s from metrics.jsonl (the median after the first logged steps). Run it on a quiet machine and again while
other work shares it; it writes one JSON record per call with the CPU, git SHA and versions.

    .venv/bin/python docs/replication/throughput/measure.py --label quiet --out docs/replication/throughput
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

MODES = {  # name: [threads per process, ...]: one process per entry, run at the same time
    "1 thread, alone": [1],
    "2 threads, alone": [2],
    "two cells at once, 1 thread each": [1, 1],
    "two cells at once, 2 threads each": [2, 2],
}


def cell_config(steps: int) -> dict:
    from hybrid_distill.config import to_dict
    from hybrid_distill.study.cell import cell_run
    from hybrid_distill.study.spec import load_study

    spec = load_study("configs/studies/locality.yaml", variant="controlled")
    cfg = to_dict(cell_run(spec, "hybrid", 0)[0])
    cfg["train"].update(max_steps=steps, log_every=5, progress=False, ckpt_every_steps=0, keep_checkpoints=1)
    return cfg


def run_mode(threads: list[int], cfg: dict, root: Path) -> list[float]:
    procs = []
    for i, n in enumerate(threads):
        run = {**cfg, "output_dir": str(root / f"p{i}"), "name": "run"}
        path = root / f"p{i}.yaml"
        path.write_text(yaml.safe_dump(run))
        env = {**os.environ, "OMP_NUM_THREADS": str(n)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hybrid_distill", "train", str(path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for p in procs:
        if p.wait():
            raise SystemExit(f"a measuring run failed (exit {p.returncode}); run it by hand: {root}")
    rates = []
    for i in range(len(threads)):
        records = [json.loads(line) for line in (root / f"p{i}" / "run" / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["img_per_s"] for r in records if "img_per_s" in r][2:]  # the first logged steps warm up
        rates.append(statistics.median(speeds))
    return rates


def main() -> None:
    from hybrid_distill.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="what else ran on the machine, e.g. quiet or shared")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="docs/replication/throughput")
    args = p.parse_args()
    cfg, results = cell_config(args.steps), {}
    for mode, threads in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            rates = run_mode(threads, cfg, Path(tmp))
        results[mode] = {"img_per_s": rates, "total": sum(rates)}
        print(f"{args.label}: {mode}: {' + '.join(f'{r:.0f}' for r in rates)} img/s", flush=True)
    out = Path(args.out) / f"{args.label}.json"
    out.write_text(
        json.dumps(
            {
                "label": args.label,
                "steps": args.steps,
                "cell": "locality controlled hybrid",
                "results": results,
                "provenance": provenance(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
