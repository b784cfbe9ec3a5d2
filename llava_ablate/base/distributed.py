"""Joining and leaving the ranks of a run (torchrun, Slurm or a bare `python`), this process's
place among them, and the precision it computes in. Training joins through DeepSpeed
(`init_distributed`), the evaluator through plain torch.distributed (`join_world`); both leave
with `shutdown_distributed`. Stops every rank agrees on are in `base/faults.py`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place among the ranks; the defaults are a world of one."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def current_world() -> DistInfo:
    """The process group already joined (by training or the evaluator), else a world of one."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())
    return DistInfo()


# sys.excepthook before this process joined a process group (see shutdown_distributed).
_excepthook_before_init = None


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(timeout_s: int = 1800) -> DistInfo:
    import deepspeed

    # A bare `python train.py` is a world of one; DeepSpeed would otherwise look for MPI.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if not torch.distributed.is_initialized():
        global _excepthook_before_init
        _excepthook_before_init = sys.excepthook
        deepspeed.init_distributed(dist_backend=_backend(), timeout=timedelta(seconds=timeout_s))
    info = DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world=torch.distributed.get_world_size(),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def join_world() -> DistInfo:
    """The evaluator's start: under torchrun (WORLD_SIZE > 1) join its process group with plain
    torch.distributed (no DeepSpeed); a bare `python` stays a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        global _excepthook_before_init
        _excepthook_before_init = sys.excepthook
        dist.init_process_group(_backend())
    return current_world()


def shutdown_distributed() -> None:
    """Leave the process group together. A rank that exits while gloo's threads still hold the
    group can abort at interpreter exit ("terminate called without an active exception")."""
    global _excepthook_before_init
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if _excepthook_before_init is not None:
        # init_process_group wraps sys.excepthook to prefix every line with "[rank<N>]: ";
        # the wrapper outlives the group, so a second start in this process printed the
        # prefix twice. The hook before the first start comes back with the group's end.
        sys.excepthook = _excepthook_before_init
        _excepthook_before_init = None


def resolve_precision(precision: str) -> str:
    """Resolve "auto": bf16 on a GPU that has it, else fp32 (other names stay as they are)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def dtype_for(precision: str) -> torch.dtype:
    """The torch dtype of a precision name ("auto" resolved first)."""
    resolved = resolve_precision(precision)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolved]
