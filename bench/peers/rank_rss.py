"""Run one rank's command as a child and record its peak RSS: `torchrun ... rank_rss.py CMD...`.

Every trainer of bench/train_throughput.py runs under this wrapper, so memory is measured the
same way for all of them: the high-water mark of the rank's own process (`VmHWM` in
/proc/<pid>/status, read every 0.2 s while it runs; it only grows, so the last reading is the
peak), written to `$BENCH_RSS_DIR/rank<RANK>.json` beside `ru_maxrss` of its children (the
largest of the rank and whatever it started and waited for: loader workers, a JIT compiler).
Standard library only: it runs in every trainer's venv.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def high_water_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
    return int(line.split()[1]) if line else None


if __name__ == "__main__":
    child = subprocess.Popen(sys.argv[1:])
    peak = 0
    while child.poll() is None:
        peak = max(peak, high_water_kib(child.pid) or 0)
        time.sleep(0.2)
    out = Path(os.environ["BENCH_RSS_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    record = {
        "rank": int(rank),
        "peak_rss_kib": peak,
        "children_max_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    sys.exit(child.returncode)
