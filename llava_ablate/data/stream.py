"""Stream a built mixture from its shards into the trainer: deterministic, disjoint, resumable.

Guarantee (stated and tested): for a fixed (mixture, seed, world size, workers per rank, micro
batch), each rank's sequence of micro-batches is a pure function of (epoch, position). Every
epoch, the selected samples are ordered by a seeded shard permutation and cut into equal,
contiguous blocks, one per (rank, worker) slot, so slots are disjoint and together cover the
epoch (minus fewer than `slots` tail samples); each slot shuffles within a seeded buffer. A
checkpoint stores (epoch, micro-batches consumed); on resume each worker fast-forwards through
the micro-batches it had already delivered (tokenising but not decoding them), so the run
continues with exactly the samples it had not seen: no repeats, no gaps.

With per-source `weight`s, each slot draws the next source with those probabilities (seeded) and
cycles a source's block when it runs out (up-sampling), for the same number of samples per epoch.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from llava_ablate.data.encode import Collator, SampleEncoder, Skip, Tokenized
from llava_ablate.data.mixture import BuiltMixture, BuiltSource


@dataclass
class Segment:
    shard: Path
    offsets: list[int]  # ascending sample offsets inside the shard


def source_segments(src: BuiltSource) -> list[Segment]:
    """The source's selected samples, grouped by shard (manifest order)."""
    starts, total = [], 0
    for _, count in src.shards:
        starts.append(total)
        total += count
    by_shard: dict[int, list[int]] = {}
    for pos in src.positions:
        i = bisect.bisect_right(starts, pos) - 1
        by_shard.setdefault(i, []).append(pos - starts[i])
    return [Segment(src.shards[i][0], offs) for i, offs in sorted(by_shard.items())]


def slot_block(segments: list[Segment], slot: int, n_slots: int) -> list[Segment]:
    """Slot `slot`'s contiguous share of the flattened segments (equal sizes, tail dropped)."""
    total = sum(len(s.offsets) for s in segments)
    per = total // n_slots
    lo, hi = slot * per, (slot + 1) * per
    out, start = [], 0
    for seg in segments:
        end = start + len(seg.offsets)
        a, b = max(lo, start), min(hi, end)
        if a < b:
            out.append(Segment(seg.shard, seg.offsets[a - start : b - start]))
        start = end
    return out


def read_segments(segments: list[Segment]) -> Iterator[dict]:
    for seg in segments:
        wanted = set(seg.offsets)
        last = seg.offsets[-1]
        pipe = wds.DataPipeline(wds.SimpleShardList([str(seg.shard)]), wds.tarfile_to_samples())
        for offset, sample in enumerate(pipe):
            if offset in wanted:
                yield sample
            if offset >= last:
                break


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A seeded shuffle buffer: deterministic for a given input order and rng."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class StreamPlan:
    """Which samples slot `slot` of `n_slots` reads in `epoch`, in order."""

    def __init__(self, mixture: BuiltMixture, seed: int, shuffle_buffer: int):
        self.mixture, self.seed, self.shuffle_buffer = mixture, seed, shuffle_buffer
        self._segments = [source_segments(s) for s in mixture.sources]

    def slot_size(self, n_slots: int) -> int:
        if self.mixture.weighted:
            return sum(s.selected // n_slots for s in self.mixture.sources)
        return self.mixture.size // n_slots

    def samples(self, epoch: int, slot: int, n_slots: int) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}:{epoch}:{slot}")
        if not self.mixture.weighted:
            segs = [seg for source in self._segments for seg in source]
            random.Random(f"{self.seed}:{epoch}").shuffle(segs)  # same permutation on every slot
            yield from shuffled(
                read_segments(slot_block(segs, slot, n_slots)), self.shuffle_buffer, rng
            )
            return
        blocks = []
        for k, segs in enumerate(self._segments):
            segs = list(segs)
            random.Random(f"{self.seed}:{epoch}:{k}").shuffle(segs)
            blocks.append(slot_block(segs, slot, n_slots))
        weights = [s.cfg.weight for s in self.mixture.sources]
        streams = [read_segments(b) for b in blocks]
        for _ in range(self.slot_size(n_slots)):
            k = rng.choices(range(len(blocks)), weights=weights)[0]
            try:
                yield next(streams[k])
            except StopIteration:  # up-sample: this source's block starts over
                streams[k] = read_segments(blocks[k])
                yield next(streams[k])


@dataclass
class BatchingOptions:
    micro_batch: int
    group_by_length: bool
    group_buffer: int  # micro-batches' worth of samples sorted together


def micro_batches(
    items: Iterator[Tokenized | Skip], opts: BatchingOptions, rng: random.Random
) -> Iterator[list[Tokenized | Skip]]:
    """Cut a slot's stream into full micro-batches, grouped by (modality, length) if asked.

    Skips stay in the batch they fell into (and are counted there), so the number of
    micro-batches per slot is floor(samples / micro_batch) whatever the data holds.
    """
    b = opts.micro_batch
    window = b * (opts.group_buffer if opts.group_by_length else 1)

    def key(x):
        return (0, 0) if isinstance(x, Skip) else (bool(x.images), x.length)

    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) == window:
            yield from _cut(buf, b, key, opts.group_by_length, rng)
            buf = []
    full = len(buf) - len(buf) % b
    if full:
        yield from _cut(buf[:full], b, key, opts.group_by_length, rng)


def _cut(buf, b, key, group, rng):
    if group:
        buf = sorted(buf, key=key)
    chunks = [buf[i : i + b] for i in range(0, len(buf), b)]
    if group:
        rng.shuffle(chunks)  # long and short batches interleave instead of arriving in order
    yield from chunks


class ShardStream(IterableDataset):
    """One epoch of one rank's micro-batches; each DataLoader worker serves one slot."""

    def __init__(
        self,
        plan: StreamPlan,
        encoder: SampleEncoder,
        collate: Collator,
        batching: BatchingOptions,
        *,
        rank: int,
        world: int,
        workers: int,
    ):
        self.plan, self.encoder, self.collate, self.batching = plan, encoder, collate, batching
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.epoch = 0
        self.consumed = 0  # micro-batches this rank already used in `epoch`

    @property
    def n_slots(self) -> int:
        return self.world * self.workers

    def batches_per_epoch(self) -> int:
        return self.workers * (self.plan.slot_size(self.n_slots) // self.batching.micro_batch)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # Batch j of an epoch comes from worker slot j % workers (the DataLoader goes round-robin
        # from its worker 0). A resumed loader starts again at worker 0, so its workers are
        # rotated to make worker 0 serve the slot whose turn is next; each slot then skips the
        # batches it had already delivered.
        local = ((info.id if info is not None else 0) + self.consumed) % self.workers
        slot = self.rank * self.workers + local
        skip = max(0, -(-(self.consumed - local) // self.workers))
        tokens = (
            self.encoder.tokenize(s) for s in self.plan.samples(self.epoch, slot, self.n_slots)
        )
        rng = random.Random(f"{self.plan.seed}:{self.epoch}:{slot}:batches")
        for k, batch in enumerate(micro_batches(tokens, self.batching, rng)):
            if k < skip:
                continue
            items = [x if isinstance(x, Skip) else self.encoder.finish(x) for x in batch]
            yield self.collate(items)


class StreamingLoader:
    """Endless micro-batches over epochs, with a position that checkpoints can save."""

    def __init__(self, stream: ShardStream, num_workers: int):
        self.stream = stream
        self.num_workers = num_workers
        if stream.batches_per_epoch() == 0:
            raise ValueError(
                f"the mixture has {stream.plan.mixture.size} samples: not one micro-batch per "
                f"worker on {stream.world} rank(s) x {stream.workers} worker(s); add data or lower "
                "recipe.micro_batch_size / data.num_workers"
            )

    def state_dict(self) -> dict:
        s = self.stream
        return {
            "epoch": s.epoch,
            "consumed": s.consumed,
            "world": s.world,
            "workers": s.workers,
            "size": s.plan.mixture.size,
            "seed": s.plan.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.stream
        now = {
            "world": s.world,
            "workers": s.workers,
            "size": s.plan.mixture.size,
            "seed": s.plan.seed,
        }
        then = {k: state[k] for k in now}
        if then != now:
            raise ValueError(
                f"cannot continue the data stream exactly: the checkpoint was taken with {then}, "
                f"this run has {now}; resume with the same data, seed, world size and workers"
            )
        s.epoch, s.consumed = state["epoch"], state["consumed"]

    def __iter__(self) -> Iterator[dict]:
        s = self.stream
        while True:
            loader = DataLoader(
                s, batch_size=None, num_workers=self.num_workers, persistent_workers=False
            )
            for batch in loader:
                s.consumed += 1
                yield batch
            s.epoch, s.consumed = s.epoch + 1, 0
