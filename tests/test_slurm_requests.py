"""Slurm requests sized from the plan (launch/requests.py): the sbatch scripts a grid's launches
would submit -- rendered by submitit from the exact overrides each multirun is started with,
through our launcher plugin's own executor -- ask for the plan's time (x the safety factor,
floored) and give an evaluation one GPU; a timeout the user sets wins."""

from __future__ import annotations

import argparse
import math
import re

import pytest
from omegaconf import OmegaConf

from llava_ablate.config import compose_config
from llava_ablate.launch.buildtime import RECORDS_PER_S_PER_WORKER
from llava_ablate.launch.requests import (
    TIME_FLOOR_MIN,
    TIME_SAFETY,
    evaluation_request,
    sized_minutes,
    training_request,
)
from llava_ablate.launch.submit import SLURM_LAUNCHER, SLURM_TARGET
from llava_ablate.launch.units import EVAL_APP

from conftest import ROOT


@pytest.fixture(autouse=True)
def _no_cluster_needed(monkeypatch):
    """Rendering an sbatch script needs no cluster: submitit refuses to build a Slurm executor
    where `srun` is not on PATH (its only check), so these tests tell it srun is there. Nothing
    is submitted; the default suite runs where Slurm was never installed (CI hides it)."""
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))


def _sbatch(launch) -> dict[str, str]:
    """The #SBATCH lines of the script submitit would submit for this multirun."""
    from hydra_plugins.llava_ablate_launcher.slurm_array import SlurmArrayLauncher

    # The launcher's node depends only on the hydra.* overrides (the job's are swept).
    hydra = [o for o in [*launch.overrides, SLURM_TARGET] if o.lstrip("+").startswith("hydra")]
    cfg = compose_config(hydra, "evaluate" if launch.app == EVAL_APP else "config",
                         return_hydra_config=True)  # fmt: skip
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == SLURM_LAUNCHER
    text = (
        SlurmArrayLauncher(**params)
        .executor()
        ._executor._make_submission_file_text("python -m app", "uid")
    )
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))


@pytest.fixture
def small_llm_x_data(tmp_path):
    """launch/llm_x_data.yaml for one variant, evaluated on two datasets of published size
    (the others' sizes are unknown without their data, which keeps their arrays unsized)."""
    grid = OmegaConf.load(ROOT / "launch/llm_x_data.yaml")
    grid.axes = {"llm": ["vicuna7b"], "data": ["llava665k"]}
    grid.stages[2].datasets = ["imagenet", "cub200"]
    path = tmp_path / "llm_x_data.yaml"
    OmegaConf.save(grid, path)
    return path


def _launches(grid_path, tmp_path, *overrides):
    from llava_ablate.launch.plan_any import plan_any
    from llava_ablate.launch.submit import grid_launches

    args = argparse.Namespace(grid=str(grid_path), runs_root=str(tmp_path / "runs"), gpu=None,
                              overrides=[f"paths.shards_root={tmp_path / 'none'}", *overrides])  # fmt: skip
    grid, jobs, evals, text = plan_any(args)
    return grid, jobs, evals, text, grid_launches(grid, jobs, args.overrides, evals)


def test_llm_x_data_submits_the_plans_time_and_one_gpu_per_evaluation(small_llm_x_data, tmp_path):
    grid, jobs, evals, text, launches = _launches(small_llm_x_data, tmp_path)
    assert len(launches) == 2 + 2  # align, finetune; an eval array per distractor strategy
    for launch in launches[:2]:
        (job,) = launch.unit.jobs
        sbatch = _sbatch(launch)
        hours = job.request.hours  # the plan's GPU-hours on the job's 8 GPUs
        assert 1 < hours < 12
        expected = max(TIME_FLOOR_MIN, math.ceil(hours * 60 * TIME_SAFETY / 10) * 10)
        assert int(sbatch["time"]) == expected < 2880
        assert sbatch["gpus-per-node"] == "8" and sbatch["ntasks-per-node"] == "8"
        line = next(x for x in text.splitlines() if f" {job.name} " in x)
        assert f" {expected}m (est {hours:.1f}h) " in line  # the request beside the estimate
    for launch in launches[2:]:
        sbatch = _sbatch(launch)
        hours = max(j.request.hours for j in launch.unit.jobs)  # imagenet's, on one GPU
        assert 0.5 < hours < 2  # ~1.1 GPU-hours for 50,000 questions
        assert int(sbatch["time"]) == math.ceil(hours * 60 * TIME_SAFETY / 10) * 10 < 2880
        assert sbatch["gpus-per-node"] == "1" and sbatch["ntasks-per-node"] == "1"
    assert "1x1 (1 GPU)" in text.split("evaluation stage")[1]
    # The shard build at the measured per-worker rate (bench/parquet_build.py), 2 workers.
    hours = 665_298 / RECORDS_PER_S_PER_WORKER / 3600
    assert f"llava665k: ~665,298 rows, ~{hours:,.1f} worker-hours = ~{hours / 2:,.1f} h" in text


def test_a_timeout_the_user_sets_is_submitted_as_written(small_llm_x_data, tmp_path):
    *_, launches = _launches(small_llm_x_data, tmp_path, "hydra.launcher.timeout_min=300")
    assert {_sbatch(launch)["time"] for launch in launches} == {"300"}
    # GPUs still sized: the user set only the time.
    assert _sbatch(launches[-1])["gpus-per-node"] == "1"


def test_sizing_rules():
    assert sized_minutes(0.01, 2880) == TIME_FLOOR_MIN  # the floor
    assert sized_minutes(3.8, 2880) == 460  # 3.8 h x 2 = 456 min, rounded up to 10
    assert sized_minutes(40, 2880) == 2880  # the launcher's limit (the job requeues itself)
    r = training_request(30.2, 8, 2880, [])
    assert r.timeout_min == 460 and r.timeout_sized
    assert r.overrides() == ["hydra.launcher.timeout_min=460"]
    assert training_request(None, 8, 2880, []).overrides() == []  # no estimate: the launcher's
    assert training_request(30.2, 8, 2880, ["+hydra.launcher.timeout_min=90"]).overrides() == []
    # Evaluations: one GPU when the model fits one and ends inside the limit, else more.
    one = evaluation_request(1.1, 7.06e9, 80, 8, 2880, [])
    assert (one.gpus, one.timeout_min) == (1, 140)
    big = evaluation_request(100.0, 7.06e9, 80, 8, 2880, [])
    assert big.gpus == 5 and big.timeout_min <= 2880  # 100 h x 2 / 48 h
    huge = evaluation_request(1.0, 72e9, 80, 8, 2880, [])  # bf16 weights > one GPU
    assert huge.gpus is None and "more than one GPU" in huge.note
    unknown = evaluation_request(None, 7e9, 80, 8, 2880, [])  # questions unknown here
    assert (unknown.gpus, unknown.timeout_min, unknown.timeout_sized) == (1, 2880, False)
    cpu = evaluation_request(None, 7e9, 0, 0, 30, [])  # a CPU grid (slurm_cpu): untouched
    assert cpu.overrides() == [] and cpu.timeout_min == 30
    kept = evaluation_request(1.0, 7e9, 80, 4, 2880, ["hydra.launcher.gpus_per_node=4"])
    assert kept.gpus is None and kept.hours == 0.25
