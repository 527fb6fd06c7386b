"""Where a run's numbers go: JSONL (one record a line, with a Unix timestamp), TensorBoard, and a
progress bar, or with `train.progress=false` a plain line every log_every steps (batch-job logs).

A run resumed from an older checkpoint first drops the records after that checkpoint's step from
metrics.jsonl, and TensorBoard's `purge_step` hides its events from there on, so no step appears twice.
"""

import json
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
        trackers: list | None = None,
    ):
        self.enabled, self.progress, self.total, self.step = enabled, progress, total_steps, start_step
        self.trackers = trackers or []  # tracking.py: W&B / MLflow, given each record as written
        self.path = Path(run_dir) / "metrics.jsonl"
        if enabled:
            drop_after(self.path, start_step)
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not (enabled and progress),
            dynamic_ncols=True,
            desc=Path(run_dir).name,
        )
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                self.bar.write("tensorboard is not installed: logging to metrics.jsonl only")
        self._last_time, self._last_step = time.perf_counter(), start_step

    def throughput(self, step: int, images_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._last_step) * images_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def log(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self.step = max(self.step, step)
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        for tracker in self.trackers:
            tracker.log(step, record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "time":
                    self.writer.add_scalar(key, value, step)

    def show(self, step: int, record: dict) -> None:
        self.bar.n = step
        shown = {k: f"{v:.4g}" for k, v in record.items() if k.endswith(("loss", "feat")) or "/rel" in k}
        shown.update(lr=f"{record.get('lr', 0):.2e}", img_s=f"{record.get('img_per_s', 0):.0f}")
        self.bar.set_postfix(shown, refresh=True)
        if self.enabled and not self.progress:
            print(f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.n = self.step  # the last step reached, not the last one shown (log_every apart)
        self.bar.close()
        for tracker in self.trackers:
            tracker.close()
        if self.writer is not None:
            self.writer.close()


def drop_after(path: Path, step: int) -> None:
    """Keep the records of steps up to `step` (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
