"""Fault injection across ranks: a fault that only one rank sees ends every rank, promptly, with
the same message. Real bad data, not hooks: two single-shard sources, and each of the two ranks
reads exactly one of them (the stream cuts the permuted shards into one contiguous block per
rank), so only the rank that reads the bad shard meets the fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, _free_port
from datagen import data_cfg, llava_rows

PER_SOURCE = 64  # one shard each (samples_per_shard), one per rank
HANG_S = 240  # a regression hangs in a collective; the process group's timeout is longer


def _write_source(root: Path, name: str, long_every: int = 0):
    from llava_ablate.config import SourceCfg

    rows = llava_rows(PER_SOURCE, name, with_images=False)
    for i, row in enumerate(rows):
        if long_every and i % long_every == long_every - 1:  # far over recipe.max_length
            row["conversations"][1]["value"] = " ".join(["overflowing"] * 400)
    path = root / f"{name}.json"
    path.write_text(json.dumps(rows))
    return SourceCfg(name=name, path=str(path))


def _build(tmp_path: Path, bad_long_every: int = 0) -> list[str]:
    """Build the two sources into shards; return the overrides that train on them."""
    from llava_ablate.data.shards import build_mixture

    sources = [
        _write_source(tmp_path, "clean"),
        _write_source(tmp_path, "bad", long_every=bad_long_every),
    ]
    shards = tmp_path / "shards"
    build_mixture(
        data_cfg("faulty", sources, shards, samples_per_shard=PER_SOURCE), seed=0, workers=1
    )
    listed = ",".join(f"{{name: {s.name}, path: '{s.path}'}}" for s in sources)
    return [
        "+experiment=tiny_finetune",
        "recipe.init_from=null",
        "data.name=faulty",
        "data.builtin=null",
        f"data.shards_dir={shards}",
        f"data.samples_per_shard={PER_SOURCE}",
        f"data.sources=[{listed}]",
        "data.num_workers=2",
        "recipe.overflow=skip",
        "recipe.max_steps=100",
        "train.log_every=1",
        "train.save_every=0",
        "train.export=false",
        "train.dist_timeout_s=600",
        "wandb.enabled=false",
        f"train.run_dir={tmp_path / 'run'}",
    ]


def _run_two_ranks(overrides: list[str], cache_dir: Path, logs: Path) -> tuple[int, float]:
    """torchrun x 2 with each rank's output in its own file; (exit code, seconds)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", f"--log-dir={logs}", "--redirects=3",
        str(ROOT / "train.py"), *overrides,
    ]  # fmt: skip
    env = {
        **os.environ,
        "LLAVA_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks did not stop within {HANG_S}s (hung in a collective):\n"
                    + "\n".join(_rank_logs(logs)))  # fmt: skip
    return proc.returncode, time.monotonic() - t0


def _rank_logs(logs: Path) -> list[str]:
    out = []
    for rank in (0, 1):
        files = sorted(logs.glob(f"*/attempt_0/{rank}/stderr.log"))
        out.append(files[-1].read_text(errors="replace") if files else "")
    return out


def _assert_all_ranks_stopped_on(logs: Path, *patterns: str) -> None:
    for rank, text in enumerate(_rank_logs(logs)):
        for pattern in patterns:
            assert pattern in text, f"rank {rank} does not name {pattern!r}:\n{text[-3000:]}"


@pytest.mark.slow
def test_bad_data_on_one_rank_stops_both(cache_dir, tmp_path):
    overrides = _build(tmp_path, bad_long_every=3)  # a third of one rank's samples too long
    rc, seconds = _run_two_ranks(overrides, cache_dir, tmp_path / "logs")
    assert rc != 0
    _assert_all_ranks_stopped_on(
        tmp_path / "logs", "TooManySkipped", "above data.max_bad_fraction=0.01", "too_long"
    )
    assert seconds < 120, f"took {seconds:.0f}s"


def _corrupt_json_member(shard: Path, index: int) -> None:
    """Bit rot in one sample's metadata, the shard's size unchanged."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".json")][index]
    with open(shard, "r+b") as fh:
        fh.seek(member.offset_data)
        fh.write(b"{" * member.size)


@pytest.mark.slow
def test_load_error_on_one_rank_stops_both(cache_dir, tmp_path):
    overrides = _build(tmp_path)
    _corrupt_json_member(next((tmp_path / "shards" / "bad").glob("*.tar")), 40)
    rc, seconds = _run_two_ranks(overrides, cache_dir, tmp_path / "logs")
    assert rc != 0
    _assert_all_ranks_stopped_on(
        tmp_path / "logs",
        "BatchLoadError",
        "could not load a micro-batch at step",
        "bad-000000.tar",
    )
    assert seconds < 120, f"took {seconds:.0f}s"


SIGNALLED_TRACKER = """
import signal, sys, psutil
from pathlib import Path
from llava_ablate.tracking import Tracker
t = Tracker(enabled=True, project="p", entity=None, group=None, name="n", run_dir=Path(sys.argv[1]),
            config={}, mode="offline")
assert t.run is not None
for p in psutil.Process().children(recursive=True):  # Slurm signals every process of the job
    p.send_signal(signal.SIGTERM)
psutil.wait_procs(psutil.Process().children(recursive=True), timeout=10)
t.log({"loss": 1.0}, step=1)
t.finish(exit_code=1, preempted=True)
"""


def test_wandb_service_killed_by_a_stop_signal_closes_cleanly(tmp_path):
    """wandb-core shuts down on the SIGTERM a preemption sends to every process of the job;
    finishing the run afterwards must not leave wandb's exit hook to print a traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", SIGNALLED_TRACKER, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
