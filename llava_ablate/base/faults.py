"""Stops that every rank agrees on.

A rank that raises on its own leaves the others waiting in their next collective: with gloo
they die with an unrelated "Connection closed by peer", with NCCL they hang until the process
group's timeout (`train.dist_timeout_s`). So each condition that can end a run (bad data, a
batch that cannot be loaded, a non-finite loss, an evaluation error) is checked at a fixed point
that every rank reaches, before anything that could block: `agree` all-reduces one flag, and
when any rank has a fault every rank raises the same `RunFault`, naming each failing rank's
cause. The healthy path costs one one-element all-reduce.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

log = logging.getLogger("llava_ablate.train")  # a run's faults are logged with its training


class RunFault(RuntimeError):
    """A condition that ends the run, raised on every rank with the same message."""


class TooManySkipped(RunFault):
    pass


class NonFiniteLoss(RunFault):
    pass


class BatchLoadError(RunFault):
    pass


class EvaluationFailed(RunFault):
    pass


_KINDS = {k.__name__: k for k in (RunFault, TooManySkipped, NonFiniteLoss, BatchLoadError,
                                  EvaluationFailed)}  # fmt: skip


def _device() -> torch.device:
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cause(error: BaseException) -> str:
    """One line: a DataLoader worker's error arrives as its whole traceback; keep the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name = type(error).__name__
    for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
        last = last.removeprefix(prefix)  # the wrapped traceback's last line repeats the type
    return last


def agree(error: BaseException | None, kind: type[RunFault], context: str) -> None:
    """Collective: every rank calls it at the same point with its own error (or None).

    When any rank passes an error, every rank raises the same fault: the failing ranks' own
    kind when it is a `RunFault`, else `kind`; the message lists each failing rank's cause,
    e.g. "rank 1 could not load a micro-batch at step 12: JSONDecodeError: ...". The failing
    rank also logs its full traceback.
    """
    if error is not None and not isinstance(error, RunFault):
        log.error("%s", context, exc_info=error)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if error is None:
            return
        if isinstance(error, RunFault):
            raise error
        raise kind(f"rank 0 {context}: {type(error).__name__}: {_cause(error)}") from error
    flag = torch.tensor([0.0 if error is None else 1.0], device=_device())
    dist.all_reduce(flag)
    if flag.item() == 0:
        return
    mine = None
    if isinstance(error, RunFault):
        mine = (type(error).__name__, f"rank {dist.get_rank()}: {error}")
    elif error is not None:
        mine = (kind.__name__, f"rank {dist.get_rank()} {context}: {type(error).__name__}: "
                               f"{_cause(error)}")  # fmt: skip
    causes: list = [None] * dist.get_world_size()
    dist.all_gather_object(causes, mine)
    failed = [c for c in causes if c is not None]
    raise _KINDS.get(failed[0][0], kind)("; ".join(text for _, text in failed)) from error
