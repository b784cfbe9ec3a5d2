"""DeepSpeed checkpoints in the run directory, and finding the latest *complete* one.

A checkpoint counts only once every rank has written its part and rank 0 has dropped the
COMPLETE marker, so a job killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / MARKER).exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_complete(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep: int) -> Path:
    """Collective: every rank calls it."""
    tag = _tag(step)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank()
    torch.save(rank_state, root / tag / f"rank_state_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (root / tag / MARKER).touch()
        for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s saved", root / tag)
    dist.barrier()
    return root / tag


def load(engine, path: Path) -> tuple[dict, dict]:
    """Collective. Restores model, optimizer and scheduler; returns (client, this rank's) state."""
    _, client_state = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {path}")
    rank_file = path / f"rank_state_{dist.get_rank():05d}.pt"
    if not rank_file.exists():
        raise RuntimeError(
            f"{rank_file} is missing: the checkpoint was written with a different world size; "
            "resume with the same number of ranks"
        )
    return client_state, torch.load(rank_file, weights_only=False)
