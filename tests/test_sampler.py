from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_ablate.data.sampler import ResumableDistributedSampler


def _epoch(size, world, micro, seed=0, epoch=0):
    out = []
    for r in range(world):
        s = ResumableDistributedSampler(size, rank=r, world=world, micro_batch=micro, seed=seed)
        s.epoch = epoch
        out.append(list(s))
    return out


@given(size=st.integers(8, 300), world=st.integers(1, 4), micro=st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_ranks_are_disjoint_equal_and_cover_all_but_the_tail(size, world, micro):
    if size < world * micro:
        return
    parts = _epoch(size, world, micro)
    seen = [i for p in parts for i in p]
    assert len(set(seen)) == len(seen)  # disjoint
    assert len({len(p) for p in parts}) == 1  # equal steps on every rank
    assert len(seen) > size - world * micro  # only the incomplete global batch is dropped


def test_epochs_reshuffle_and_seeds_differ():
    assert _epoch(100, 2, 4, epoch=0) != _epoch(100, 2, 4, epoch=1)
    assert _epoch(100, 2, 4, seed=1) != _epoch(100, 2, 4, seed=2)
    assert _epoch(100, 2, 4) == _epoch(100, 2, 4)


@given(batches=st.integers(0, 15))
@settings(max_examples=30, deadline=None)
def test_resume_continues_exactly(batches):
    """Restoring a saved position yields exactly the samples not yet consumed."""
    epochs = _epoch(50, 2, 3, seed=7, epoch=0)[1], _epoch(50, 2, 3, seed=7, epoch=1)[1]
    per_epoch = len(epochs[0])  # 24 samples = 8 micro-batches of 3 on this rank
    run = ResumableDistributedSampler(50, rank=1, world=2, micro_batch=3, seed=7)
    for _ in range(batches):
        run.advance(3)
    resumed = ResumableDistributedSampler(50, rank=1, world=2, micro_batch=3, seed=7)
    resumed.load_state_dict(run.state_dict())
    consumed = batches * 3
    assert list(resumed) == epochs[consumed // per_epoch][consumed % per_epoch :]


def test_resume_refuses_a_different_world():
    s = ResumableDistributedSampler(50, rank=0, world=2, micro_batch=3, seed=7)
    other = ResumableDistributedSampler(50, rank=0, world=4, micro_batch=3, seed=7)
    with pytest.raises(ValueError, match="same data and world size"):
        other.load_state_dict(s.state_dict())


def test_too_small_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        ResumableDistributedSampler(5, rank=0, world=2, micro_batch=4, seed=0)
