"""Slurm requests sized from the plan: a job's time limit from its estimated wall-clock time,
an evaluation job's GPUs from what its model needs.

Backfill schedules by the time limit, so a 48-hour request for a 1-hour job waits for a 48-hour
hole. The plan's GPU-hours assume the grid's MFU (40% by default); the request adds a safety
factor for a slower run (and a floor for start-up, compilation, checkpoint and export), and
stays at or below the launcher's `timeout_min` (slurm.yaml: 2,880 min), the most the partition
is assumed to allow -- a longer training job reaches it, checkpoints on the USR1 signal and
requeues itself (launch/task.py), as before.

What the user sets wins: a `hydra.launcher.timeout_min`, `gpus_per_node` or `tasks_per_node` in
the grid's `launcher`, a stage's overrides or on the command line is submitted as written. Jobs
the plan cannot size (no GPU assumed, data not sized) keep the launcher's values. Submitting
with `--no-plan` skips the plan, and with it the sizing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TIME_SAFETY = 2.0  # x the estimate: a run at half the assumed MFU still ends inside its limit
TIME_FLOOR_MIN = 60  # start-up, DeepSpeed/kernel compilation, data opening, checkpoint, export
TIME_STEP_MIN = 10  # requests are rounded up to this
EVAL_MAX_GPUS = 8  # one node: the evaluator shards questions across its ranks
WEIGHT_HEADROOM = 1.3  # bf16 weights x this (activations, the KV of a batch) must fit one GPU

TIME_KEYS = ("timeout_min",)
GPU_KEYS = ("gpus_per_node", "tasks_per_node")


def user_set(key: str, overrides: Iterable[str]) -> bool:
    """`hydra.launcher.<key>=...` (with or without `+`/`++`) is among the overrides."""
    return any(o.lstrip("+").split("=", 1)[0] == f"hydra.launcher.{key}" for o in overrides)


@dataclass(frozen=True)
class Request:
    """What one Slurm job asks for. `hours`: the plan's wall-clock estimate on the requested
    GPUs (None: unknown). `gpus`: GPUs (= tasks) per node when sized, None to keep the
    launcher's. `timeout_sized`: False when the time limit is the launcher's or the user's."""

    timeout_min: int
    hours: float | None = None
    gpus: int | None = None
    timeout_sized: bool = False
    note: str = ""
    limit_min: int = 0  # the launcher's timeout_min: the most a sized request asks for

    def overrides(self) -> list[str]:
        """The launcher overrides that carry the sized values (after the grid's launcher list,
        before the command line's)."""
        out = []
        if self.timeout_sized:
            out.append(f"hydra.launcher.timeout_min={self.timeout_min}")
        if self.gpus is not None:
            out += [f"hydra.launcher.gpus_per_node={self.gpus}",
                    f"hydra.launcher.tasks_per_node={self.gpus}"]  # fmt: skip
        return out

    def cell(self) -> str:
        """The plan's `time` column: the request, and the estimate it came from."""
        estimate = "" if self.hours is None else f" (est {fmt_hours(self.hours)})"
        return f"{self.timeout_min}m{estimate}"


def fmt_hours(hours: float) -> str:
    return f"{hours * 60:.0f}m" if hours < 1 else f"{hours:.1f}h"


def sized_minutes(hours: float, ceiling_min: int) -> int:
    """hours x TIME_SAFETY in minutes, rounded up to TIME_STEP_MIN, at least TIME_FLOOR_MIN,
    at most `ceiling_min` (the launcher's limit)."""
    minutes = math.ceil(hours * 60 * TIME_SAFETY / TIME_STEP_MIN) * TIME_STEP_MIN
    return max(TIME_FLOOR_MIN, min(minutes, ceiling_min)) if ceiling_min else minutes


def training_request(
    gpu_hours: float | None, gpus: int, launcher_timeout: int, explicit: Sequence[str]
) -> Request:
    """A training job on the launcher's GPUs: its time limit from the plan's GPU-hours."""
    hours = gpu_hours / gpus if gpu_hours is not None and gpus else None
    if hours is None:
        return Request(launcher_timeout, note="no estimate: the launcher's time limit")
    if any(user_set(k, explicit) for k in TIME_KEYS):
        return Request(launcher_timeout, hours, note="timeout_min as set")
    minutes = sized_minutes(hours, launcher_timeout)
    return Request(minutes, hours, timeout_sized=True, limit_min=launcher_timeout)


def evaluation_request(
    gpu_hours: float | None,
    params: float | None,
    gpu_mem_gib: float,
    launcher_gpus: int,
    launcher_timeout: int,
    explicit: Sequence[str],
) -> Request:
    """An evaluation job: one GPU when its model fits one (each rank holds the whole model;
    more ranks only split the questions), more only when one GPU would run past the launcher's
    time limit; its time limit from the estimate on those GPUs."""
    gpus_set = any(user_set(k, explicit) for k in GPU_KEYS)
    gpus: int | None = None
    note = ""
    if gpus_set:
        note = "GPUs as set"
    elif not launcher_gpus or not gpu_mem_gib:
        note = "a CPU launcher or no GPU assumed: the launcher's tasks"
    elif not params:
        note = "model size unknown: the launcher's GPUs"
    elif 2 * params * WEIGHT_HEADROOM / 2**30 > gpu_mem_gib:
        note = "its bf16 weights need more than one GPU's memory: the launcher's GPUs kept"
    elif gpu_hours is None:  # questions unknown: one GPU still holds the model
        gpus, note = 1, "questions unknown: one GPU, the launcher's time limit"
    else:
        needed = gpu_hours * 60 * TIME_SAFETY / launcher_timeout if launcher_timeout else 1
        gpus = min(EVAL_MAX_GPUS, max(1, math.ceil(needed)))
    on = gpus or launcher_gpus
    hours = gpu_hours / on if gpu_hours is not None and on else None
    if hours is None or any(user_set(k, explicit) for k in TIME_KEYS):
        return Request(launcher_timeout, hours, gpus, note=note or "timeout_min as set")
    minutes = sized_minutes(hours, launcher_timeout)
    return Request(minutes, hours, gpus, True, note, launcher_timeout)


def unit_request(requests: Sequence[Request | None], share: float = 1.0) -> Request | None:
    """One Slurm array's request (its tasks share one sbatch script): the longest of its
    jobs'. `share`: the part of each job one array task runs (1/shards for a sharded
    evaluation; 0 for the merge after it, which loads no model). None when any job was not
    planned (`--no-plan`): the launcher's values."""
    if not requests or any(r is None for r in requests):
        return None
    unknown = [r for r in requests if r.hours is None]  # type: ignore[union-attr]
    if unknown:  # one job of the array cannot be sized: the launcher's values for all
        return unknown[0]
    longest = max(requests, key=lambda r: (r.hours or 0.0, r.timeout_min))  # type: ignore[union-attr]
    if share == 1.0 or longest.hours is None or not longest.timeout_sized:
        return longest
    hours = longest.hours * share
    minutes = sized_minutes(hours, longest.limit_min)
    return Request(minutes, hours, longest.gpus, True, longest.note, longest.limit_min)


def request_line(gpu: str) -> str:
    """How the plan's `time` column (Request.cell) follows from the estimate."""
    if gpu == "cpu":
        return "time: the launcher's timeout_min (no GPU assumed, nothing to size it from)"
    return (
        f"time: the Slurm time limit requested (est: the wall-clock estimate on the job's "
        f"GPUs) = est x {TIME_SAFETY:g}, at least {TIME_FLOOR_MIN} min, at most the "
        "launcher's timeout_min (a longer job checkpoints and requeues itself there); a "
        "hydra.launcher.timeout_min you set is used as written"
    )
