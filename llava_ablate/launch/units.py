"""What one multirun submits (one `python -m <app> -m ...`, one Slurm job array), for either
kind of grid: a *unit* of training jobs (`train.py -m`, the axes swept) or of evaluation jobs
(`evaluate.py -m`, the datasets swept), and the launch that starts it with its overrides.

A job that later stages start from is a unit of its own, so that each of its children can
wait for its own array (launch/submit.py chains the arrays with Slurm's afterok).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.config import CONF_DIR
from llava_ablate.launch.evalgrid import EvalJob
from llava_ablate.launch.grid import GridSpec, Job, quote
from llava_ablate.launch.requests import Request, unit_request

# train.py and evaluate.py as modules of the installed package (TRAIN_APP: local_jobs.py): they
# run from any directory (relative paths in a grid, --runs-root and hydra.searchpath mean the
# same to the jobs as to this process).
EVAL_APP = "llava_ablate.launch.evaluate_app"


@dataclass
class Unit:
    """Jobs submitted by one `train.py -m` (one Slurm array)."""

    stage: str
    jobs: list[Job]
    parent: Job | None  # the job all of these start from (same for every job of the unit)

    @property
    def label(self) -> str:
        return self.jobs[0].name if len(self.jobs) == 1 else f"{len(self.jobs)} jobs"


def _is_group(axis: str) -> bool:
    return (CONF_DIR / axis).is_dir()


def _sweepable(jobs: list[Job]) -> bool:
    """Jobs form a full product over config-group axes (so run dirs can be interpolated)."""
    axes = list(jobs[0].axes)
    if not all(_is_group(a) for a in axes):
        return False
    values = {a: sorted({j.axes[a] for j in jobs}) for a in axes}
    return len(jobs) == len(list(itertools.product(*values.values())))


def make_units(jobs: list[Job]) -> list[Unit]:
    """Unfinished jobs, parents first; a job others start from is a unit of its own."""
    todo = [j for j in jobs if not j.finished]
    units: list[Unit] = []
    groups: dict[tuple[str, int], list[Job]] = {}
    for job in todo:
        if any(not c.finished for c in job.children):
            units.append(Unit(job.stage, [job], job.parent))
        else:
            groups.setdefault((job.stage, id(job.parent)), []).append(job)
    for members in groups.values():
        if _sweepable(members):
            units.append(Unit(members[0].stage, members, members[0].parent))
        else:
            units += [Unit(j.stage, [j], j.parent) for j in members]
    stage_order = {j.stage: i for i, j in enumerate(jobs)}
    return sorted(units, key=lambda u: stage_order[u.stage])


def _axis_ref(axis: str) -> str:
    return f"${{hydra:runtime.choices.{axis}}}"


def unit_overrides(unit: Unit, grid: GridSpec, sweep_dir: Path) -> list[str]:
    single = len(grid.stages) == 1
    first = unit.jobs[0]
    if len(unit.jobs) == 1:
        per_job = first.all_overrides(single)
    else:  # sweep the axes; run dir and W&B name are rebuilt per job from Hydra's choices
        axes = list(first.axes)
        sweeps = [f"{a}={','.join(sorted({j.axes[a] for j in unit.jobs}))}" for a in axes]
        name = ",".join(f"{a}={_axis_ref(a)}" for a in axes)
        run_dir = str(first.run_dir.parent / name)
        wandb_name = name if single else f"{unit.stage}/{name}"
        per_job = [
            *first.common,
            *sweeps,
            *first.stage_overrides,
            f"train.run_dir={quote(run_dir)}",
            f"wandb.group={quote(grid.name)}",
            f"wandb.name={quote(wandb_name)}",
        ]
    request = unit_request([j.request for j in unit.jobs])  # sized by the plan, if it ran
    return [
        *per_job,
        *grid.launcher,
        *(request.overrides() if request else []),  # the command line's (after) win
        f"hydra.sweep.dir={quote(str(sweep_dir))}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]


@dataclass
class EvalUnit:
    """Jobs submitted by one `evaluate.py -m` (one Slurm array): one model and distractor
    strategy, its unfinished datasets swept -- and, when sharded, `shard.index` too (then a
    merge unit with `shard.count=1` follows, after the shards' array)."""

    stage: str
    jobs: list[EvalJob]
    parent: Job | EvalJob | None  # what the array waits for (afterok)
    shards: int = 1  # >1: every dataset split into this many array tasks
    merge: bool = False  # the job after the shards: merges their predictions, writes metrics

    @property
    def label(self) -> str:
        first = self.jobs[0]
        what = f"{first.model}/{first.distractors}: {', '.join(j.dataset for j in self.jobs)}"
        if self.shards > 1:
            return f"{what} x {self.shards} shards"
        return f"{what} (merge)" if self.merge else what

    @property
    def request(self) -> Request | None:
        """The array's Slurm request: the longest of its jobs', per array task."""
        share = 0.0 if self.merge else 1.0 / self.shards
        return unit_request([j.request for j in self.jobs], share)

    def overrides(self, launcher: list[str], sweep_dir: Path) -> list[str]:
        """evaluate.py's multirun: the jobs' overrides, the grid's launcher, then the request
        sized from the plan (the command line's, appended by the caller, win over it)."""
        datasets = [j.dataset for j in self.jobs]
        request = self.request
        sweep = ",".join(datasets) if len(datasets) > 1 else f"[{datasets[0]}]"
        shards = []
        if self.shards > 1:
            shards = [f"shard.index={','.join(map(str, range(self.shards)))}",
                      f"shard.count={self.shards}"]  # fmt: skip
        return [
            *self.jobs[0].base_overrides(),
            f"eval/datasets={sweep}",
            *shards,
            *launcher,
            *(request.overrides() if request else []),
            f"hydra.sweep.dir={quote(str(sweep_dir))}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ]


def make_eval_units(jobs: list[EvalJob]) -> list[EvalUnit]:
    """Unfinished jobs grouped per (stage, model, distractors, training parent); a sharded
    group is two units: the shards' array, then the merge after it."""
    groups: dict[tuple, list[EvalJob]] = {}
    for job in jobs:
        if not job.finished:
            key = (job.stage, job.model, job.distractors, id(job.parent), job.shards)
            groups.setdefault(key, []).append(job)
    units = []
    for members in groups.values():
        first = members[0]
        if first.shards > 1:
            units.append(EvalUnit(first.stage, members, first.parent, shards=first.shards))
            units.append(EvalUnit(first.stage, members, first, merge=True))
        else:
            units.append(EvalUnit(first.stage, members, first.parent))
    return units


@dataclass
class Launch:
    """One `python -m <app> -m` multirun to start: a training unit or an evaluation unit."""

    unit: Unit | EvalUnit
    app: str  # TRAIN_APP | EVAL_APP
    overrides: list[str]  # without the dependency
    sweep_dir: Path


def numbered_launches(
    units: Sequence[Unit | EvalUnit],
    app: str,
    root: Path,
    sweep_name: Callable,
    overrides: Callable,
    start: int = 0,
) -> list[Launch]:
    """A launch per unit, in submission order: its sweep directory `<root>/<nn>-<sweep_name>`
    (numbered from `start`) and the overrides it is started with, `overrides(unit, dir)`."""
    out = []
    for i, unit in enumerate(units, start):
        sweep_dir = root / f"{i:02d}-{sweep_name(unit)}"
        out.append(Launch(unit, app, overrides(unit, sweep_dir), sweep_dir))
    return out


def sweep_slug(unit: EvalUnit) -> str:
    """An evaluation unit's model and distractor strategy, as a directory name."""
    job = unit.jobs[0]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job.model) + (
        f"-{job.distractors}"
    )
