"""Cut a slot's stream of tokenised samples into micro-batches of rows (`data.batching`).

A micro-batch is a list of rows; a row is a list of samples laid end to end. `none` and `group`
put one sample in each row; `pack` lays several samples in a row up to `max_length`, each
attending only to itself (the collator restarts position_ids per sample, which transformers
turns into a block-diagonal mask for sdpa/eager and into varlen flash-attention).

Every mode yields floor(samples / micro_batch) micro-batches per slot, and `pack` keeps the
number of samples per window: a window of `group_buffer` micro-batches' worth of samples is
packed into rows and the rows are dealt out to that many micro-batches. So an epoch has the same
number of optimizer steps, and a step the same number of samples on average, in every mode.
Which samples share a micro-batch differs between modes (as it does between none and group).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass

from llava_ablate.base.config import choices_of
from llava_ablate.config import DataCfg
from llava_ablate.data.encode import Skip, Tokenized

MODES = choices_of(DataCfg, "batching")

Row = list  # samples (Tokenized, later their finished dicts or Skips) laid end to end
MicroBatch = list  # rows


@dataclass
class BatchingOptions:
    micro_batch: int  # samples per micro-batch (per window on average, with `pack`)
    mode: str = "group"  # one of MODES (data.batching)
    group_buffer: int = 32  # micro-batches' worth of samples sorted or packed together
    max_length: int = 2048  # a packed row's limit in tokens (recipe.max_length)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"data.batching={self.mode!r}; choose one of {list(MODES)}")


def micro_batches(
    items: Iterator[Tokenized | Skip], opts: BatchingOptions, rng: random.Random
) -> Iterator[MicroBatch]:
    """A slot's micro-batches, each a list of rows. Skips travel in a one-item row of the batch
    they fell into (the collator counts them and drops the row), so the number of micro-batches
    per slot is floor(samples / micro_batch) whatever the data holds."""
    b = opts.micro_batch
    window = b if opts.mode == "none" else b * opts.group_buffer
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) == window:
            yield from _cut(buf, opts, rng)
            buf = []
    full = len(buf) - len(buf) % b
    if full:
        yield from _cut(buf[:full], opts, rng)


def _cut(buf: list, opts: BatchingOptions, rng: random.Random) -> Iterator[MicroBatch]:
    b = opts.micro_batch
    if opts.mode == "pack":
        batches = pack_window(buf, len(buf) // b, opts.max_length)
    else:
        if opts.mode == "group":
            buf = sorted(buf, key=_modality_length)
        batches = [[[x] for x in buf[i : i + b]] for i in range(0, len(buf), b)]
    if opts.mode != "none":
        rng.shuffle(batches)  # long and short batches interleave instead of arriving in order
    yield from batches


def _modality_length(x: Tokenized | Skip) -> tuple[bool, int]:
    return (False, 0) if isinstance(x, Skip) else (bool(x.images), x.length)


def pack_window(items: list[Tokenized | Skip], n_batches: int, max_length: int) -> list[MicroBatch]:
    """Pack `items` into rows of at most `max_length` tokens, the same number of rows in each of
    `n_batches` micro-batches, rows as even as possible.

    A micro-batch is padded to its longest row, so what matters is rows of equal length, not
    full ones: take the fewest rows that are a multiple of `n_batches` (so every batch gets the
    same count), lay the samples longest first each into the row holding the fewest tokens
    (LPT scheduling; when even that row has no room, retry with `n_batches` more rows), then cut
    the rows, sorted by length, into consecutive runs: rows of a batch differ by a few tokens.
    Skips are spread over the batches (counted where they fell). Deterministic: ties keep
    stream order.
    """
    samples = [x for x in items if not isinstance(x, Skip)]
    for x in samples:
        if x.length > max_length:
            raise ValueError(
                f"sample {x.id} has {x.length} tokens, more than a packed row's "
                f"recipe.max_length={max_length}; the encoder should have truncated or skipped it"
            )
    samples.sort(key=lambda x: -x.length)  # stable: equal lengths keep stream order
    total = sum(x.length for x in samples)
    per_batch = max(1, -(-total // (max_length * n_batches)))
    rows = _balanced_rows(samples, per_batch * n_batches, max_length)
    while rows is None:
        per_batch += 1
        rows = _balanced_rows(samples, per_batch * n_batches, max_length)
    rows = sorted((r for r in rows if r), key=lambda r: -sum(x.length for x in r))
    batches: list[MicroBatch] = [
        rows[k * per_batch : (k + 1) * per_batch] for k in range(n_batches)
    ]
    # Fewer samples than rows (tiny samples, or skips): fill empty batches from the fullest.
    for k in range(n_batches):
        if not batches[k]:
            donor = max(range(n_batches), key=lambda i: len(batches[i]))
            if len(batches[donor]) > 1:
                batches[k].append(batches[donor].pop())
    skips = [x for x in items if isinstance(x, Skip)]
    for i, skip in enumerate(skips):
        batches[i % n_batches].append([skip])
    return batches


def _balanced_rows(samples: list[Tokenized], n_rows: int, max_length: int) -> list[Row] | None:
    """Samples (longest first) each into the emptiest of `n_rows` rows; None when one does not
    fit there (then it fits nowhere)."""
    heap = [(0, k) for k in range(n_rows)]  # (tokens, row index): the emptiest row on top
    rows: list[Row] = [[] for _ in range(n_rows)]
    for x in samples:
        tokens, k = heap[0]
        if tokens + x.length > max_length:
            return None
        rows[k].append(x)
        heapq.heapreplace(heap, (tokens + x.length, k))
    return rows
