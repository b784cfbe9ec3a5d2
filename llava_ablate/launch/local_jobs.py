"""A local multirun (`train.py -m ...` with Hydra's basic launcher) trains each job in a process
of its own.

Hydra's basic launcher calls the task once per job in one process. DeepSpeed keeps module-level
state across `deepspeed.initialize` (its process-group caches in `deepspeed.utils.groups`, the
communication backend in `deepspeed.comm`), which points at the previous job's destroyed process
group, so job #1 died in `_broadcast_model` ("Group ... is not registered"). A fresh Python
process per job starts every job from nothing -- the same as a single run, so the child is one:
`python -m llava_ablate.launch.train_app <the job's overrides>`, with its own run directory as
Hydra's output directory (its config records and `train.log` there) and its identity checked
before Hydra writes anything (config.py `ValidateOnStart`).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from pathlib import Path

from llava_ablate.base.config import ConfigError

log = logging.getLogger("llava_ablate.launch")

TRAIN_APP = "llava_ablate.launch.train_app"

# The multirun's own Hydra overrides, which a single run of one job must not get.
_SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher",
               "hydra/launcher")  # fmt: skip


class JobFailed(RuntimeError):
    """A job's own process failed; its error is printed above (and in its train.log)."""


def in_process_sweep(scheduler: str) -> bool:
    """True for a job of a multirun that Hydra runs in this process (the basic launcher, or any
    launcher without a scheduler of its own). Submitit's launchers (`local`, `slurm`) already
    start a process per job. A multirun under torchrun would run every job on every rank in
    one process each: refused (ConfigError)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    if scheduler == "torchrun":
        raise ConfigError(
            "a multirun (-m) under torchrun is not supported: run `python train.py -m ...` "
            "(each job then starts its own ranks) or use hydra/launcher=slurm"
        )
    return scheduler == "none"


def _sweep_only(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return any(key == s or key.startswith(s + ".") for s in _SWEEP_ONLY)


def job_command() -> list[str]:
    """The single-run command of the current multirun job: its config name and directories,
    the job's overrides, and the user's Hydra overrides except the sweep's own."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    cmd = [sys.executable, "-m", TRAIN_APP]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line":  # --config-dir
            cmd += ["--config-dir", source.path]
    if hc.job.config_name != "config":
        cmd += ["--config-name", hc.job.config_name]
    cmd += [o for o in hc.overrides.hydra if not _sweep_only(o)]
    return cmd + list(hc.overrides.task)


def run_job_in_own_process(run_dir: str) -> None:
    """Train the current multirun job in a child process (output streamed as it comes);
    JobFailed when it fails, so Hydra reports the job as failed and runs the others."""
    from hydra.core.hydra_config import HydraConfig

    num = HydraConfig.get().job.num
    cmd = job_command()
    log.setLevel(logging.INFO)  # Hydra's job logging defaults the root to WARNING
    log.info("job #%d in its own process: %s", num, shlex.join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        log_file = Path(run_dir) / "train.log"
        where = f" and in {log_file}" if log_file.is_file() and log_file.stat().st_size else ""
        raise JobFailed(f"job #{num} failed (exit {code}): its error is printed above{where}")
