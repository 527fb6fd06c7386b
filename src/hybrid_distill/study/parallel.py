"""A study's cells run one at a time in this process, or `jobs` at a time in worker processes.

Measured on this project's 2-core CPU (docs/replication/throughput/, the locality study's Hybrid cell): a
cell trains at 305 img/s on 1 thread and 392 on 2 when the machine is quiet, 205 and 62 while two other
1-thread jobs run; two cells at once on 1 thread each give 527 in all (quiet). torch's default of one
thread per core oversubscribes the moment anything else runs, so each cell here gets `threads` threads
(default 1) and the study runs as many cells at once as it has cores. Cells are keyed by content
(cell.py), so workers never share a directory.
"""

import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch
from omegaconf import DictConfig, OmegaConf


def default_jobs(cells: int) -> int:
    """One cell per core available to this process, at most one per cell (1 where a GPU trains the cells)."""
    if torch.cuda.is_available():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cells))


def worker_start(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def cell_job(study: dict, row: str, seed: int) -> tuple[dict, float]:
    """One cell in a worker: the study spec as a plain dict, the evaluation data loaded here."""
    from .cell import run_cell
    from .evaluation_data import evaluation_data
    from .spec import load_study

    spec = load_study(study)
    start = time.perf_counter()
    return run_cell(spec, row, seed, evaluation_data(spec)), time.perf_counter() - start


def run_cells(
    spec: DictConfig, todo: list[tuple[str, int]], data: tuple, jobs: int, threads: int | None
) -> Iterator[tuple[str, int, dict, float]]:
    """(row, seed, finished cell, seconds) as each cell of `todo` finishes."""
    from .cell import run_cell

    if jobs <= 1:
        if threads is not None:
            torch.set_num_threads(threads)
        for row, seed in todo:
            start = time.perf_counter()
            yield row, seed, run_cell(spec, row, seed, data), time.perf_counter() - start
        return
    study = OmegaConf.to_container(spec, enum_to_str=True)
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=worker_start, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(cell_job, study, row, seed): (row, seed) for row, seed in todo}
        for future in as_completed(futures):
            cell, seconds = future.result()
            yield (*futures[future], cell, seconds)
