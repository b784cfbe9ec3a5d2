"""Training metrics: a local JSONL file (the source of truth for reports) plus log lines."""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch

from llava_ablate.base.files import atomic_write

log = logging.getLogger("llava_ablate.train")


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


class MetricsLogger:
    """Rank 0 appends one JSON object per logged step to `<run_dir>/metrics.jsonl`."""

    def __init__(self, run_dir: Path, enabled: bool, tracker=None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tracker = tracker  # optional W&B mirror (rank 0 only)
        self._t0 = time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3), **metrics}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        log.info("step %d %s", step, shown)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file matches the run.

        A line that does not parse (torn by a full disk or a power loss mid-write) is dropped
        with a warning naming it; it must not make every later resume crash.
        """
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for lineno, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
                logged_at = record["step"]
            except (json.JSONDecodeError, TypeError, KeyError):
                log.warning(
                    "%s:%d: dropped a torn or unreadable line: %.80r", self.path, lineno, line
                )
                continue
            if logged_at <= step:
                keep.append(line)
        with atomic_write(self.path) as tmp:  # a crash here leaves the old file, not half of it
            tmp.write_text("".join(ln + "\n" for ln in keep))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
