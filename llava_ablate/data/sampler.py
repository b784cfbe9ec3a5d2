"""A distributed sampler whose position can be saved and restored exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Epoch-seeded permutation, split round-robin across ranks, resumable mid-epoch.

    Guarantee: for a fixed (dataset size, seed, world size), the sequence of samples each rank
    sees is a pure function of (epoch, position); restoring (epoch, position) continues the
    stream exactly where the checkpoint was taken, with no repeats and no gaps. The tail that
    does not fill a global micro-batch is dropped so every rank takes the same number of steps.
    """

    def __init__(self, size: int, *, rank: int, world: int, micro_batch: int, seed: int):
        self.size, self.rank, self.world = size, rank, world
        self.micro_batch, self.seed = micro_batch, seed
        self.epoch = 0
        self.position = 0  # samples this rank has already consumed in the current epoch
        if self.per_rank == 0:
            raise ValueError(
                f"dataset has {size} samples, fewer than one global micro-batch "
                f"({world} ranks x {micro_batch}); add data or lower recipe.micro_batch_size"
            )

    @property
    def per_rank(self) -> int:
        step = self.world * self.micro_batch
        return (self.size // step) * self.micro_batch

    def __len__(self) -> int:
        return self.per_rank - self.position

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "size": self.size,
            "world": self.world,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["size"], state["world"]) != (self.size, self.world):
            raise ValueError(
                f"cannot resume the data position exactly: checkpoint was taken with "
                f"{state['size']} samples on {state['world']} ranks, now {self.size} on "
                f"{self.world}; resume with the same data and world size"
            )
        self.epoch, self.position = state["epoch"], state["position"]

    def advance(self, samples: int) -> None:
        """Record that the trainer consumed `samples` more samples on this rank."""
        self.position += samples
        if self.position >= self.per_rank:
            self.epoch += 1
            self.position = 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
        mine = order[self.rank :: self.world].tolist()
        return iter(mine[self.position :])
