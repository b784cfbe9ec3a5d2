"""How long converting a mixture's sources to shards takes (`llava-ablate data build`),
projected from a per-worker rate measured by bench/parquet_build.py.

The build converts every row of every source (`sampling` selects at read time), so the
projection counts the sources' declared rows (data.sizes), not the samples a run draws.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava_ablate.config import DataCfg

# bench/parquet_build.py: the streaming parquet build, one worker, 1,000 rows a shard, each row
# a distinct ~40 KB 512x384 JPEG re-encoded to the 336 px the CLIP-L/336 grids store, and 1-4
# LLaVA turns; 2,000- and 20,000-row files (78 and 777 MiB). The rate is records per CPU-second
# of the worker (171 measured), i.e. a worker with a core of its own: on the shared machine it
# was measured on (2 cores, load 10-14) the wall clock gave 31 records/s. LLaVA-JSON sources
# (image files) do the same work per image; text-only rows are faster.
RECORDS_PER_S_PER_WORKER = 170.0
MEASURED = (
    "bench/parquet_build.py: records per CPU-second of one worker, 2-core x86_64 CPU under "
    "load 10-14, 2026-12-03"
)


@dataclass
class BuildEstimate:
    mixture: str
    records: int  # rows of the sources that declare a size
    lower_bound: bool  # some released sources declare no size
    workers: int  # data.build_workers

    @property
    def worker_hours(self) -> float:
        return self.records / RECORDS_PER_S_PER_WORKER / 3600

    @property
    def hours(self) -> float:
        return self.worker_hours / max(1, self.workers)


def build_estimate(data: DataCfg) -> BuildEstimate | None:
    """The mixture's build at the measured rate; None when no source declares its size."""
    released = [s for s in data.sources if s.released]
    sized = [s for s in released if s.name in data.sizes]
    if not sized:
        return None
    records = sum(int(data.sizes[s.name].samples) for s in sized)
    return BuildEstimate(data.name, records, len(sized) < len(released), data.build_workers)


def build_lines(estimates: dict[str, tuple[BuildEstimate, bool]]) -> list[str]:
    """The plan's lines: mixture -> (its estimate, already built)."""
    if not estimates:
        return []
    out = [f"shard build (`llava-ablate data build`) at {RECORDS_PER_S_PER_WORKER:g} records/s "
           f"per worker ({MEASURED}):"]  # fmt: skip
    for name, (e, built) in estimates.items():
        mark = ">=" if e.lower_bound else "~"
        state = "built" if built else "not built yet"
        out.append(
            f"  {name}: {mark}{e.records:,} rows, {mark}{e.worker_hours:,.1f} worker-hours = "
            f"{mark}{e.hours:,.1f} h with data.build_workers={e.workers} ({state})"
        )
    return out
