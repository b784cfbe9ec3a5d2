"""Run one rank's command as a child and record its peak RSS: `torchrun ... rank_rss.py CMD...`.

Every trainer of bench/train_throughput.py runs under this wrapper, so memory is measured the
same way for all of them: `ru_maxrss` of the rank's children (the trainer process itself; a
loader worker or compiler it starts counts only if it is larger, never added), written to
`$BENCH_RSS_DIR/rank<RANK>.json`. Standard library only: it runs in every trainer's venv.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    code = subprocess.run(sys.argv[1:]).returncode
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = Path(os.environ["BENCH_RSS_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": int(rank), "peak_rss_kib": peak_kib}))
    sys.exit(code)
