"""torch.distributed / DeepSpeed initialisation from torchrun, Slurm or a bare `python`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 1800) -> DistInfo:
    import deepspeed

    # A bare `python train.py` is a world of one; DeepSpeed would otherwise look for MPI.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
    info = DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world=torch.distributed.get_world_size(),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown_distributed() -> None:
    """Leave the process group together. A rank that exits while gloo's threads still hold the
    group can abort at interpreter exit ("terminate called without an active exception")."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def dtype_for(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
