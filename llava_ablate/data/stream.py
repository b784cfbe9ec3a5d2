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

import atexit
import bisect
import copy
import hashlib
import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from llava_ablate.data.batching import BatchingOptions, micro_batches
from llava_ablate.data.encode import Collator, SampleEncoder, Skip, Tokenized
from llava_ablate.data.mixture import BadShard, BuiltMixture, BuiltSource, bad_shard_message

log = logging.getLogger(__name__)


@dataclass
class Segment:
    shard: Path
    offsets: list[int]  # ascending sample offsets inside the shard
    count: int = 0  # samples the manifest lists for the shard
    sha256: str | None = None  # the manifest's; None (an older manifest): not verified


def source_segments(src: BuiltSource) -> list[Segment]:
    """The source's selected samples, grouped by shard (manifest order)."""
    starts, total = [], 0
    for shard in src.shards:
        starts.append(total)
        total += shard.count
    by_shard: dict[int, list[int]] = {}
    for pos in src.positions:
        i = bisect.bisect_right(starts, pos) - 1
        by_shard.setdefault(i, []).append(pos - starts[i])
    return [
        Segment(src.shards[i].path, offs, src.shards[i].count, src.shards[i].sha256)
        for i, offs in sorted(by_shard.items())
    ]


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
            out.append(
                Segment(seg.shard, seg.offsets[a - start : b - start], seg.count, seg.sha256)
            )
        start = end
    return out


def _incomplete(sample: dict) -> str | None:
    """Why a stored sample is not whole (a shard cut inside it), else None."""
    if "json" not in sample:
        return f"sample {sample.get('__key__')} has no json member"
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"sample {sample.get('__key__')}: unreadable json ({e})"
    if not isinstance(meta, dict):
        return f"sample {sample.get('__key__')}: its json is not an object"
    missing = [k for k in meta.get("images", []) if k not in sample]
    if missing:
        return f"sample {sample.get('__key__')} lacks its image member(s) {missing}"
    return None


class HashingReader(io.RawIOBase):
    """A binary file that hashes (sha256) and counts every byte read from it, in order, so a
    shard is verified by the one pass that reads it; `finish()` reads the rest of the file
    (what the wanted samples did not need) through the hash."""

    def __init__(self, path: Path):
        self._fh = open(path, "rb")  # noqa: SIM115 -- closed by finish()/close()
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._fh.readinto(buffer)
        if n:
            view = memoryview(buffer)[:n]
            self.sha256.update(view)
            self.bytes += n
        return n

    def finish(self) -> tuple[int, str]:
        """(bytes, sha256 hex) of the whole file."""
        while chunk := self._fh.read(1 << 20):
            self.sha256.update(chunk)
            self.bytes += len(chunk)
        return self.bytes, self.sha256.hexdigest()

    def close(self) -> None:
        self._fh.close()
        super().close()


def _samples(reader: HashingReader, url: str) -> Iterator[dict]:
    """webdataset's own tar stages (members -> samples grouped by key) over an open stream."""
    files = wds.tariterators.tar_file_expander([{"url": url, "stream": reader}])
    return wds.tariterators.group_by_keys(files)


def read_segments(
    segments: list[Segment], on_bad_shard: str = "error", rebuild: str = "<rebuild>"
) -> Iterator[dict | Skip]:
    """The wanted samples of each segment, checked against the manifest every epoch.

    Each shard is hashed as it is read (sha256, the manifest's; the tail after the last wanted
    sample is read through the hash too), and its samples are held back until the hash matches:
    a sample is never trained on from a shard whose bytes differ from the build's -- an image
    changed in place (same size) included. A shard that ends before its last wanted sample (a
    copy cut at a tar member boundary reads as a clean end of file), holds a partial sample,
    fails to read or fails its hash is a fault: `BadShard` naming it and the rebuild command,
    or with on_bad_shard="skip" one counted `bad_shard` Skip per wanted sample of it, so the
    epoch keeps its length and every rank its number of batches. `rebuild`: the command that
    rebuilds the shards (data build with the run's overrides).
    """
    for seg in segments:
        wanted = set(seg.offsets)
        last = seg.offsets[-1]
        held: list[dict] = []
        offset, why = -1, None
        reader = HashingReader(seg.shard)
        try:
            for offset, sample in enumerate(_samples(reader, str(seg.shard))):
                if offset in wanted:
                    why = _incomplete(sample)
                    if why:
                        break
                    held.append(sample)
                if offset >= last:
                    break
            else:
                why = f"it ends after {offset + 1} samples, the manifest lists {seg.count}"
            if why is None and seg.sha256:
                size, digest = reader.finish()
                if digest != seg.sha256:
                    why = f"its sha256 differs from the manifest's ({size} bytes read)"
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            why = f"reading failed after {offset + 1} samples ({type(e).__name__}: {e})"
        finally:
            reader.close()
        if why is None:
            yield from held
            continue
        if on_bad_shard != "skip":
            raise BadShard(bad_shard_message(seg.shard, why, rebuild))
        # Nothing of a shard that fails its checks is trained on: which bytes changed is unknown.
        log.warning(
            "%s (%d here)", bad_shard_message(seg.shard, why, rebuild, True), len(seg.offsets)
        )
        for off in seg.offsets:
            yield Skip(f"{seg.shard.name}#{off}", "bad_shard", why)


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

    def _read(self, segments: list[Segment]) -> Iterator[dict | Skip]:
        return read_segments(segments, self.mixture.on_bad_shard, self.mixture.rebuild_command)

    def samples(self, epoch: int, slot: int, n_slots: int) -> Iterator[dict | Skip]:
        rng = random.Random(f"{self.seed}:{epoch}:{slot}")
        if not self.mixture.weighted:
            segs = [seg for source in self._segments for seg in source]
            random.Random(f"{self.seed}:{epoch}").shuffle(segs)  # same permutation on every slot
            yield from shuffled(
                self._read(slot_block(segs, slot, n_slots)), self.shuffle_buffer, rng
            )
            return
        blocks = []
        for k, segs in enumerate(self._segments):
            segs = list(segs)
            random.Random(f"{self.seed}:{epoch}:{k}").shuffle(segs)
            blocks.append(slot_block(segs, slot, n_slots))
        weights = [s.cfg.weight for s in self.mixture.sources]
        streams = [self._read(b) for b in blocks]
        for _ in range(self.slot_size(n_slots)):
            k = rng.choices(range(len(blocks)), weights=weights)[0]
            try:
                yield next(streams[k])
            except StopIteration:  # up-sample: this source's block starts over
                streams[k] = self._read(blocks[k])
                yield next(streams[k])


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
        return self.batches(rotation=self.consumed)

    def batches(self, rotation: int) -> Iterator[dict]:
        """This worker's batches of `self.epoch` after the first `self.consumed` of the rank's.
        `rotation`: the rank's position when its DataLoader started (kept across epochs)."""
        info = get_worker_info()
        # Batch j of an epoch comes from worker slot j % workers (the DataLoader goes round-robin
        # from its worker 0). A resumed loader starts again at worker 0, so its workers are
        # rotated to make worker 0 serve the slot whose turn is next; each slot then skips the
        # batches it had already delivered.
        local = ((info.id if info is not None else 0) + rotation) % self.workers
        slot = self.rank * self.workers + local
        skip = max(0, -(-(self.consumed - local) // self.workers))
        tokens = (
            s
            if isinstance(s, Skip)
            else _tokenize(self.encoder, s, self.plan.mixture.rebuild_command)
            for s in self.plan.samples(self.epoch, slot, self.n_slots)
        )
        rng = random.Random(f"{self.plan.seed}:{self.epoch}:{slot}:batches")
        for k, batch in enumerate(micro_batches(tokens, self.batching, rng)):
            if k < skip:
                continue
            done = iter(self.encoder.finish_all([x for r in batch for x in r]))
            yield self.collate.rows([[next(done) for _ in r] for r in batch])


class SampleLoadError(RuntimeError):
    """A stored sample that cannot be read at all (a damaged shard), as opposed to a sample
    that is read but unusable (a counted `Skip`)."""


def _tokenize(encoder: SampleEncoder, sample: dict, rebuild: str) -> Tokenized | Skip:
    try:
        return encoder.tokenize(sample)
    except Exception as e:  # name the shard and sample: the worker's traceback does not
        raise SampleLoadError(
            f"{sample.get('__url__')}: sample {sample.get('__key__')} cannot be encoded "
            f"({type(e).__name__}: {e}); if the shard is damaged, `{rebuild}` verifies and "
            "rebuilds it"
        ) from e


def resolve_workers(setting: int | str) -> int:
    """data.num_workers; auto: the CPUs this process may use per local rank (torchrun's
    LOCAL_WORLD_SIZE), one left to the trainer itself, at most 8."""
    if setting != "auto":
        return int(setting)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_rank = (cpus or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank - 1))


class _Epochs(IterableDataset):
    """The stream's epochs one after another, so DataLoader workers live for the whole run:
    no worker start-up and empty prefetch queue at each epoch boundary. Every slot delivers
    the same number of micro-batches per epoch, so the DataLoader's round-robin over workers
    stays in step with the slots across boundaries."""

    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self) -> Iterator[dict]:
        s = copy.copy(self.stream)  # its own position: the loader's copy counts delivered ones
        rotation = s.consumed  # epochs hold a multiple of `workers` batches: it stays valid
        while True:
            yield from s.batches(rotation)
            s.epoch, s.consumed = s.epoch + 1, 0


class StreamingLoader:
    """Endless micro-batches over epochs, with a position that checkpoints can save.

    Each worker keeps `prefetch_factor` micro-batches ready, so the trainer finds a batch
    waiting whenever the workers together produce faster than it consumes (data.num_workers:
    add workers until they do; `bench/loader_throughput.py` measures both rates)."""

    def __init__(
        self,
        stream: ShardStream,
        num_workers: int,
        worker_init_fn: Callable[[int], None] | None = None,
        prefetch_factor: int = 4,
    ):
        self.stream = stream
        self.num_workers = num_workers
        self.worker_init_fn = worker_init_fn  # e.g. leave stop signals to the main process
        self.prefetch_factor = prefetch_factor
        self._live = None  # the current epoch's DataLoader iterator (its worker processes)
        if stream.batches_per_epoch() == 0:
            raise ValueError(
                f"the mixture has {stream.plan.mixture.size} samples: not one micro-batch per "
                f"worker on {stream.world} rank(s) x {stream.workers} worker(s); add data or lower "
                "recipe.micro_batch_size / data.num_workers"
            )

    def close(self) -> None:
        """Stop the worker processes now. Workers that ignore SIGTERM (so a scheduler's stop
        signal cannot kill them before the main process checkpoints) would also ignore
        multiprocessing's terminate() at interpreter exit and hang it; this asks them to
        finish, and kills the ones that do not."""
        live, self._live = self._live, None
        workers = getattr(live, "_workers", [])
        if hasattr(live, "_shutdown_workers"):
            live._shutdown_workers()
        for w in workers:
            if w.is_alive():
                w.kill()

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
        per_epoch = s.batches_per_epoch()
        loader = DataLoader(
            _Epochs(s),
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            worker_init_fn=self.worker_init_fn,
        )
        if self._live is None and self.num_workers:
            atexit.register(self.close)  # before multiprocessing's own exit hook runs
        self._live = iter(loader)
        for batch in self._live:
            if s.consumed == per_epoch:  # the previous batch ended an epoch
                s.epoch, s.consumed = s.epoch + 1, 0
            s.consumed += 1
            yield batch
