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

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.launch.evalgrid import EvalGridSpec, EvalJob
from llava_ablate.launch.grid import GridSpec, Job
from llava_ablate.launch.kinds import kind_of
from llava_ablate.launch.slurm import JOB_IDS_FILE
from llava_ablate.launch.units import EvalUnit, Launch, Unit

log = logging.getLogger("llava_ablate.launch")

# Hydra's submitit Slurm launcher, recording the job ids it submitted (JOB_IDS_FILE).
SLURM_LAUNCHER = "hydra_plugins.llava_ablate_launcher.slurm_array.SlurmArrayLauncher"
SLURM_TARGET = f"hydra.launcher._target_={SLURM_LAUNCHER}"


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


def launch_root(grid: GridSpec | EvalGridSpec) -> Path:
    """Where a grid's multiruns keep their commands, logs and submitit files."""
    return Path(grid.runs_root) / grid.name / ".launch"


def grid_launches(
    grid: GridSpec | EvalGridSpec,
    jobs: list[Job],
    extra: list[str],
    evals: list[EvalJob] | None = None,
) -> list[Launch]:
    """The multiruns that submit a grid's unfinished jobs (a training grid's, then its
    evaluations), each with the overrides it is started with (the plan's Slurm request
    included)."""
    return kind_of(grid).launches(grid, jobs, evals or [], extra, launch_root(grid))


def submit_grid(
    grid: GridSpec | EvalGridSpec,
    jobs: list[Job],
    extra: list[str],
    *,
    wait: bool = True,
    submit_timeout_s: float = 300,
    evals: list[EvalJob] | None = None,
) -> int:
    """Submit every unfinished job of either kind of grid -- a training grid's, then its
    evaluation stages' (each after its own training job); an evaluation grid's, one Slurm
    array per model and distractor strategy. Returns the number of units that failed (0 when
    waiting is off and everything was submitted). A training grid: RunConfigMismatch, before
    anything is submitted, when a job's run directory holds a run of another config
    (launch/plan.py check_identities)."""
    kind_of(grid).check(grid, jobs, extra)  # "finished" only for a run of the config composed now
    launches = grid_launches(grid, jobs, extra, evals)
    return run_launches(grid.name, launches, [*grid.launcher, *extra], launch_root(grid), wait,
                        submit_timeout_s)  # fmt: skip


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
