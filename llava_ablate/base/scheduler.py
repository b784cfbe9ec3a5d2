"""Which launcher started this process and how many ranks it started, read from the
environment alone (no torch, no process group): the config callbacks need it before any work,
`launch/slurm.py` before it exports torch.distributed's variables."""

from __future__ import annotations

import os
from collections.abc import Mapping


def detect_scheduler(environ: Mapping[str, str] | None = None) -> str:
    """torchrun | slurm (an `srun` step or submitit's Slurm job) | local (submitit's local
    executor) | none (a bare `python`)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "LOCAL_RANK" in env:
        return "torchrun"
    if env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        return env["SUBMITIT_EXECUTOR"]
    # A plain `srun -n8 python train.py` step (not the batch shell, which has no SLURM_STEP_ID
    # of its own tasks): every task is one rank.
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return "slurm"
    return "none"


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The ranks the launcher started (a run's identity records it): torchrun's WORLD_SIZE, a
    Slurm step's SLURM_NTASKS, else 1."""
    env = os.environ if environ is None else environ
    scheduler = detect_scheduler(env)
    if scheduler == "torchrun":
        return int(env.get("WORLD_SIZE", "1"))
    if scheduler == "slurm":
        return int(env.get("SLURM_NTASKS", "1"))
    return 1
