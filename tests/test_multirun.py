"""A local multirun as users type it (issue 17 §1): the real `train.py -m` over 2 x 2 tiny
variants trains and exports every job, each in a process of its own, then says "nothing to do"
for each of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

GRID = [
    "+experiment=tiny_finetune",
    "recipe.init_from=null",
    "recipe.max_steps=3",
    "recipe.lr.llm=1e-4,2e-4",
    "train.seed=1,2",
    "wandb.enabled=false",
]


def _multirun(runs: Path, cwd: Path, cache_dir: Path) -> str:
    env = {**os.environ, "LLAVA_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *GRID, f"train.runs_root={runs}"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


@pytest.mark.slow  # 4 jobs x a fresh process each, twice: 3.7-6 min on 2 loaded cores
def test_local_multirun_trains_and_exports_every_job_then_nothing_to_do(tmp_path, cache_dir):
    runs = tmp_path / "runs"
    out = _multirun(runs, tmp_path, cache_dir)
    assert "is not registered" not in out
    assert "[rank0]: [rank0]:" not in out
    run_dirs = sorted(p for p in runs.iterdir() if p.name != "multirun")
    assert len(run_dirs) == 4, run_dirs
    trained = set()
    for run_dir in run_dirs:
        assert (run_dir / "export" / "COMPLETE").exists(), f"{run_dir.name} did not export"
        meta = json.loads((run_dir / "export" / "llava_ablate.json").read_text())
        assert meta["steps"] == 3
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        trained.add((config["recipe"]["lr"]["llm"], config["train"]["seed"]))
        # Each job was a single run: Hydra's records and the log are in its run directory.
        overrides = yaml.safe_load((run_dir / "hydra" / "overrides.yaml").read_text())
        assert f"train.seed={config['train']['seed']}" in overrides
        log = (run_dir / "train.log").read_text()
        assert "command: " in log and f"config hash {run_dir.name[-8:]}" in log
        assert "exported " in log
    assert trained == {(1e-4, 1), (1e-4, 2), (2e-4, 1), (2e-4, 2)}
    # The sweep's records: under the runs root, one per job, named after its run directory.
    (sweep,) = (runs / "multirun").iterdir()
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert sorted(n.split("-", 1)[0] for n in names) == ["0", "1", "2", "3"]
    assert {n.split("-", 1)[1] for n in names} == {d.name for d in run_dirs}
    # multirun/<time>/<job>/hydra/<record>: no directories made of an override's slashes
    assert max(len(p.relative_to(runs).parts) for p in (runs / "multirun").rglob("*")) == 5

    again = _multirun(runs, tmp_path, cache_dir)
    assert again.count("nothing to do") == 4, again[-4000:]
    for run_dir in run_dirs:  # appended across attempts
        log = (run_dir / "train.log").read_text()
        assert log.count("command: ") == 2 and "nothing to do" in log
