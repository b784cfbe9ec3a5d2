"""Submit a grid through Hydra's launcher: `train.py -m ... hydra/launcher=slurm`, one multirun
per *unit* of jobs that can share one Slurm job array.

Hydra's submitit launcher submits a sweep as one array and then waits for it, so chaining is
done with Slurm itself: a job that later stages start from is its own unit, and each unit of
later-stage jobs is submitted with submitit's `dependency=afterok:<that array id>` -- stage 2
queues at once and starts when its own stage 1 has succeeded (or is cancelled if that failed).
The array id is submitit's `job.job_id`, which our subclass of the launcher records as soon as
sbatch has returned (hydra_plugins/llava_ablate_launcher/slurm_array.py). Without Slurm (basic
or submitit_local launchers) the units run one after the other instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.config import CONF_DIR
from llava_ablate.launch.evalgrid import (
    EvalGridSpec,
    EvalJob,
    EvalUnit,
    evaluation_overrides,
    make_eval_units,
)
from llava_ablate.launch.grid import GridSpec, Job, quote
from llava_ablate.launch.requests import unit_request
from llava_ablate.launch.slurm import JOB_IDS_FILE

log = logging.getLogger("llava_ablate.launch")

# Hydra's submitit Slurm launcher, recording the job ids it submitted (JOB_IDS_FILE).
SLURM_LAUNCHER = "hydra_plugins.llava_ablate_launcher.slurm_array.SlurmArrayLauncher"
SLURM_TARGET = f"hydra.launcher._target_={SLURM_LAUNCHER}"
# train.py, as a module of the installed package: runs from any directory (relative paths in a
# grid, --runs-root and hydra.searchpath mean the same to the jobs as to this process).
TRAIN_APP = "llava_ablate.launch.train_app"
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


def launcher_choice(overrides: list[str]) -> str:
    choice = "basic"
    for o in overrides:
        if o.startswith("hydra/launcher="):
            choice = o.split("=", 1)[1]
    return choice


def uses_slurm(launcher: list[str]) -> bool:
    """The launcher overrides (grid's, then the command line's) choose a Slurm launcher."""
    choice = launcher_choice(launcher)
    return choice.startswith("slurm") or choice == "submitit_slurm"


@dataclass
class Submitted:
    unit: Unit | EvalUnit
    process: subprocess.Popen
    log_path: Path
    array_id: str | None = None


def _wait_for_array_id(sub: Submitted, sweep_dir: Path, timeout_s: float) -> str:
    """The array's Slurm job id: the launcher writes submitit's `job.job_id` of every job
    (`<array id>_<task>`) to JOB_IDS_FILE once sbatch has returned (Hydra composes the config
    first, which takes a few seconds)."""
    record = sweep_dir / JOB_IDS_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if record.exists():  # written whole (atomic replace)
            return json.loads(record.read_text())[0].split("_")[0]
        if sub.process.poll() is not None and sub.process.returncode != 0:
            break
        time.sleep(0.5)
    tail = sub.log_path.read_text(errors="replace")[-3000:] if sub.log_path.exists() else ""
    raise RuntimeError(
        f"no Slurm job id for {sub.unit.stage}/{sub.unit.label} after {timeout_s:.0f}s "
        f"(see {sub.log_path}):\n{tail}"
    )


@dataclass
class Launch:
    """One `python -m <app> -m` multirun to start: a training unit or an evaluation unit."""

    unit: Unit | EvalUnit
    app: str  # TRAIN_APP | EVAL_APP
    overrides: list[str]  # without the dependency
    sweep_dir: Path


def submit_grid(
    grid: GridSpec,
    jobs: list[Job],
    extra: list[str],
    *,
    wait: bool = True,
    submit_timeout_s: float = 300,
    evals: list[EvalJob] | None = None,
) -> int:
    """Submit every unfinished job, then every unfinished evaluation of the grid's evaluation
    stages (each after its own training job); returns the number of units that failed (0 when
    waiting is off and everything was submitted). RunConfigMismatch, before anything is
    submitted, when a job's run directory holds a run of another config
    (launch/plan.py check_identities)."""
    from llava_ablate.launch.plan import check_identities

    check_identities(grid, jobs, extra)  # "finished" only for a run of the config composed now
    root = Path(grid.runs_root) / grid.name / ".launch"
    launches = grid_launches(grid, jobs, extra, evals or [])
    return run_launches(grid.name, launches, [*grid.launcher, *extra], root, wait,
                        submit_timeout_s)  # fmt: skip


def grid_launches(
    grid: GridSpec, jobs: list[Job], extra: list[str], evals: list[EvalJob]
) -> list[Launch]:
    """The multiruns that submit a training grid's unfinished jobs, then its evaluations:
    each with the overrides it is started with (the plan's Slurm request included)."""
    root = Path(grid.runs_root) / grid.name / ".launch"
    launches = []
    for unit in make_units(jobs):
        sweep_dir = root / f"{len(launches):02d}-{unit.stage}"
        overrides = unit_overrides(unit, grid, sweep_dir) + list(extra)
        launches.append(Launch(unit, TRAIN_APP, overrides, sweep_dir))
    for unit in make_eval_units(evals):
        sweep_dir = root / f"{len(launches):02d}-{unit.stage}-{_slug(unit.jobs[0])}"
        overrides = unit.overrides(list(grid.launcher), sweep_dir)
        launches.append(Launch(unit, EVAL_APP, overrides + evaluation_overrides(extra),
                               sweep_dir))  # fmt: skip
    return launches


def submit_eval_grid(
    grid: EvalGridSpec,
    jobs: list[EvalJob],
    extra: list[str],
    *,
    wait: bool = True,
    submit_timeout_s: float = 300,
) -> int:
    """Submit every unfinished evaluation of a `kind: evaluate` grid: one Slurm array per model
    and distractor strategy, its unfinished datasets swept."""
    root = Path(grid.runs_root) / grid.name / ".launch"
    launches = eval_grid_launches(grid, jobs, extra)
    return run_launches(grid.name, launches, [*grid.launcher, *extra], root, wait,
                        submit_timeout_s)  # fmt: skip


def eval_grid_launches(grid: EvalGridSpec, jobs: list[EvalJob], extra: list[str]) -> list[Launch]:
    """An evaluation grid's multiruns, each with the overrides it is started with."""
    root = Path(grid.runs_root) / grid.name / ".launch"
    launches = []
    for unit in make_eval_units(jobs):
        sweep_dir = root / f"{len(launches):02d}-{_slug(unit.jobs[0])}"
        overrides = unit.overrides(list(grid.launcher), sweep_dir) + list(extra)
        launches.append(Launch(unit, EVAL_APP, overrides, sweep_dir))
    return launches


def _slug(job: EvalJob) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job.model) + (
        f"-{job.distractors}"
    )


def run_launches(
    name: str,
    launches: list[Launch],
    launcher: list[str],
    root: Path,
    wait: bool,
    submit_timeout_s: float,
) -> int:
    """Start each multirun; under Slurm chain a unit to its parent's array (afterok), else run
    them one after the other. Returns the number of failed units."""
    if not launches:
        print(f"grid {name}: every job is finished; nothing to submit")
        return 0
    slurm = uses_slurm(launcher)
    array_of: dict[int, str] = {}  # id(job) -> Slurm array job id
    submitted: list[Submitted] = []
    failed = 0
    for launch in launches:
        unit, sweep_dir = launch.unit, launch.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(launch.overrides)
        parent = unit.parent
        if slurm:
            overrides.append(SLURM_TARGET)
        if slurm and parent is not None and id(parent) in array_of:
            overrides += [  # submitit's own `dependency`; Slurm's kill-on-invalid-dep beside it
                f"+hydra.launcher.dependency=afterok:{array_of[id(parent)]}",
                "+hydra.launcher.additional_parameters.kill_on_invalid_dep=yes",
            ]
        cmd = [sys.executable, "-m", launch.app, "-m", *overrides]
        log_path = sweep_dir / "launcher.log"
        (sweep_dir / "command.txt").write_text(" ".join(map(quote_shell, cmd)) + "\n")
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        sub = Submitted(unit, proc, log_path)
        if slurm:
            sub.array_id = _wait_for_array_id(sub, sweep_dir, submit_timeout_s)
            for job in unit.jobs:
                array_of[id(job)] = sub.array_id
            after = f" after {array_of[id(parent)]}" if parent and id(parent) in array_of else ""
            print(f"submitted {unit.stage}/{unit.label}: Slurm array {sub.array_id}{after}")
        else:  # no scheduler to chain with: run the units in order
            print(f"running {unit.stage}/{unit.label} ({launcher_choice(launcher)})")
            if proc.wait() != 0:
                failed += 1
                print(f"  failed (exit {proc.returncode}); log: {log_path}")
                break
        submitted.append(sub)
    if not slurm or not wait:
        if slurm:
            print(f"launcher processes keep running and log to {root}/*/launcher.log")
        return failed
    for sub in submitted:
        code = sub.process.wait()
        state, bad = unit_outcome(code, sub.array_id, sub.log_path)
        print(f"{sub.unit.stage}/{sub.unit.label} [array {sub.array_id}]: {state}")
        failed += bad
    return failed


def queued_states(array_id: str | None) -> list[str]:
    """Slurm states of the array's jobs still in the queue (empty when none, or no squeue)."""
    if not array_id:
        return []
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", array_id, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def unit_outcome(code: int, array_id: str | None, log_path: Path) -> tuple[str, bool]:
    """(what to print, whether it failed) for a unit whose launcher process ended with `code`.

    A job that Slurm requeued (preemption, `scontrol requeue`, its own time-limit requeue) is
    still queued and resumes from its checkpoint: pending, not failed, even when the launcher
    process stopped waiting for it.
    """
    if code == 0:
        return "finished", False
    queued = queued_states(array_id)
    if queued:
        states = ", ".join(sorted(set(queued)))
        return (
            f"pending in Slurm ({states}): requeued, it resumes from its checkpoint; run the "
            "grid again later to collect it",
            False,
        )
    return f"FAILED (exit {code}, log {log_path})", True


def quote_shell(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
