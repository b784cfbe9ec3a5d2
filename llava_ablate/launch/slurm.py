"""What a Slurm (or submitit) task needs before and after training: torch.distributed's
environment from the scheduler's, and requeueing itself after a preemption checkpoint.

One task per GPU (on CPU: per rank). torchrun sets RANK/LOCAL_RANK itself and is left alone.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.base.scheduler import detect_scheduler

log = logging.getLogger("llava_ablate.launch")

# The training loop's stop handler (llava_ablate/train/preemption.py) listens to SIGUSR1 and
# SIGTERM; submitit defaults to USR2 for its `--signal` and its own handler. Both must agree,
# so the launcher, the sbatch script and the tasks all use USR1.
PREEMPT_SIGNAL = "USR1"

# The Slurm job ids (`<array>_<task>`) that the launcher (hydra_plugins/llava_ablate_launcher)
# submitted for one multirun, written to its sweep directory as soon as sbatch has returned.
JOB_IDS_FILE = "slurm_jobs.json"


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


@dataclass
class TaskEnv:
    scheduler: str  # torchrun | slurm | local (submitit's local executor) | none
    rank: int
    local_rank: int
    world: int
    job_id: str | None = None
    restarts: int = 0  # SLURM_RESTART_COUNT: how many times this job was requeued

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def master_port(job_id: str) -> int:
    """The rendezvous port of a job: the same on every task, derived from the job id, and below
    the kernel's ephemeral port range -- submitit's own choice (20000-60000) overlaps it, so an
    outgoing connection on the node could already hold the port (EADDRINUSE on rank 0 while the
    other ranks wait for it)."""
    try:
        ephemeral_low = int(Path(EPHEMERAL_RANGE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low = 20000
    high = max(ephemeral_low - 1, low + 1000)
    return random.Random(job_id).randint(low, high)


def export_distributed_env() -> TaskEnv:
    """Set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the scheduler.

    All GPUs of a node stay visible to each of its tasks (`gpus_per_node`, not
    `gpus_per_task`); the training code picks `cuda:LOCAL_RANK`.
    """
    scheduler = detect_scheduler()
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if scheduler in ("slurm", "local"):
        if scheduler == "slurm" and "SUBMITIT_EXECUTOR" not in os.environ:
            os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # lets submitit read a plain srun step
        import submitit

        if scheduler == "slurm":
            # sbatch exports the submitting shell's env: a MASTER_PORT set there would be shared
            # by every concurrent job on a node (EADDRINUSE), so derive one per job id.
            os.environ.pop("MASTER_PORT", None)  # submitit's export refuses a preset one
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False
        )
        if scheduler == "slurm":
            dist_env.master_port = master_port(submitit.JobEnvironment().job_id)
            os.environ["MASTER_PORT"] = str(dist_env.master_port)
        job_id = submitit.JobEnvironment().job_id
        env = TaskEnv(
            scheduler, dist_env.rank, dist_env.local_rank, dist_env.world_size, job_id, restarts
        )
        if env.is_main:
            log.setLevel(logging.INFO)  # Hydra's job logging defaults the root to WARNING
            log.info(
                "%s job %s: %d tasks, master %s:%s, restart %d",
                scheduler,
                job_id,
                env.world,
                dist_env.master_addr,
                dist_env.master_port,
                restarts,
            )
        return env
    rank = int(os.environ.get("RANK", "0"))
    return TaskEnv(
        scheduler,
        rank,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
    )


def requeue_job(job_id: str) -> bool:
    """`scontrol requeue <job>`: Slurm ends this run and queues the job again, same id and
    script; True on success. A job already being requeued by the scheduler (preemption with
    PreemptMode=REQUEUE) makes scontrol fail, which is fine."""
    try:
        subprocess.run(
            ["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("scontrol requeue %s failed: %s", job_id, str(detail).strip())
        return False
    log.warning("job %s requeued: it will resume from its checkpoint", job_id)
    return True
