"""The tasks every launcher runs (torchrun, bare python, Slurm or submitit-local): the
distributed environment from the scheduler, then `run_training` (and a requeue after a
preemption) or `run_evaluation` (a requeued evaluation resumes: finished questions are kept).
A job of a local multirun trains in a process of its own instead (launch/local_jobs.py)."""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from llava_ablate.base.scheduler import detect_scheduler
from llava_ablate.launch.local_jobs import in_process_sweep, run_job_in_own_process
from llava_ablate.launch.slurm import export_distributed_env, requeue_job

log = logging.getLogger("llava_ablate.launch")

DEFAULT_MAX_REQUEUES = 20


def _max_requeues() -> int:
    """`hydra.launcher.max_num_timeout` when a launcher config is present (the same budget
    submitit applies to its own timeouts), else DEFAULT_MAX_REQUEUES."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
        return int(launcher.get("max_num_timeout", DEFAULT_MAX_REQUEUES))
    except (ValueError, AttributeError):  # not inside a Hydra job
        return DEFAULT_MAX_REQUEUES


def train_task(cfg: DictConfig) -> None:
    if in_process_sweep(detect_scheduler()):  # a local multirun: one process per job
        run_job_in_own_process(cfg.train.run_dir)
        return
    env = export_distributed_env()
    from llava_ablate.train.run import TrainingInterrupted, run_training  # after the env is set

    try:
        run_training(cfg)
    except TrainingInterrupted as stop:
        if env.scheduler != "slurm":
            raise  # torchrun / local: the same command again resumes
        # Every rank has written its part of the checkpoint (the save ends with a barrier).
        budget = _max_requeues()
        if env.restarts >= budget:
            log.error(
                "job %s stopped (%s) after %d requeues; not requeueing",
                env.job_id,
                stop,
                env.restarts,
            )
            raise
        if env.is_main:
            requeue_job(str(env.job_id))
        # SystemExit, not an exception: submitit writes no result for this run, so the
        # launcher keeps waiting for the requeued one.
        sys.exit(3)


def eval_task(cfg: DictConfig) -> None:
    """evaluate.py's task: under Slurm every task is one rank of the evaluation, as under
    torchrun (questions shared out, rank 0 merges)."""
    from omegaconf import OmegaConf

    export_distributed_env()
    from llava_ablate.eval.run import run_evaluation  # after the env is set

    run_evaluation(OmegaConf.to_object(cfg))
