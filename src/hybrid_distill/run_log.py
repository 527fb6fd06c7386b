"""Where a run's numbers go: JSONL (one record a line), TensorBoard, and a progress bar."""
import json
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (enabled and progress),
                        dynamic_ncols=True, desc=Path(run_dir).name)
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
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
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def show(self, step: int, record: dict) -> None:
        self.bar.n = step
        shown = {k: f"{v:.4g}" for k, v in record.items() if k.endswith(("loss", "feat")) or "/rel" in k}
        shown.update(lr=f"{record.get('lr', 0):.2e}", img_s=f"{record.get('img_per_s', 0):.0f}")
        self.bar.set_postfix(shown, refresh=True)

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
