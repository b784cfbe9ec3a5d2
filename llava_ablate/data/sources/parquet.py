"""LLaVA-OneVision-Data style parquet: `id`, `image` ({bytes, path} or bytes), `conversations`.

Rows are streamed: a read decodes only the row groups that hold the rows asked for, a batch of
rows at a time through a bounded I/O buffer, so memory stays near one batch (never the file:
real OneVision files are hundreds of MB). Consecutive reads continue the open stream, so a build
that writes a file's shards in order (shards.py groups shards that share a row group into one
worker's run) reads every file once.
"""

from __future__ import annotations

import bisect
import glob
import json
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from llava_ablate.config import SourceCfg
from llava_ablate.data.conversation import json_type_name
from llava_ablate.data.sources import RawRecord, SourceError, require_files

COLUMNS = ("id", "image", "conversations")  # the only ones read; others are never decoded
BATCH_ROWS = 32  # rows decoded at a time (each may hold an image of a few MB)
IO_BUFFER = 1 << 20  # bytes read from disk at a time, instead of a whole column chunk
LARGE_ROW_GROUP = 1 << 30  # uncompressed bytes: worth a warning (memory per build worker)

log = logging.getLogger(__name__)


class _RowStream:
    """One file's rows from row group `first_group` on, in order, a batch at a time."""

    def __init__(self, path: Path, group_starts: list[int], first_group: int, columns: list[str]):
        self.path = path
        self.pos = group_starts[first_group]  # file row of the next row `take` sees
        self._file = pq.ParquetFile(path, buffer_size=IO_BUFFER, pre_buffer=False)
        groups = range(first_group, self._file.num_row_groups)
        self._batches = self._file.iter_batches(
            batch_size=BATCH_ROWS, row_groups=groups, columns=columns, use_threads=False
        )
        self._rows: deque[dict] = deque()  # decoded rows from `pos` on

    def take(self, a: int, b: int) -> Iterator[tuple[int, dict]]:
        """(file row, row) for rows [a, b); a >= pos. Leaves the stream at b."""
        while self.pos < b:
            if not self._rows:
                self._rows = deque(next(self._batches).to_pylist())
            row = self._rows.popleft()
            self.pos += 1
            if self.pos > a:
                yield self.pos - 1, row

    def close(self) -> None:
        self._file.close()


class ParquetReader:
    def __init__(self, src: SourceCfg):
        self.src = src
        self.files = sorted(Path(p) for p in glob.glob(src.path)) or [Path(src.path)]
        require_files(self.files, f"source {src.name!r}")
        # Row offsets per file and each row group's first row, from the footers only, so an
        # index range maps to (file, row group) without reading any data.
        self.offsets: list[tuple[Path, int, int]] = []
        self.group_starts: dict[Path, list[int]] = {}  # file -> first file row of each group
        self.columns: dict[Path, list[str]] = {}
        total = 0
        for f in self.files:
            meta = pq.ParquetFile(f)
            cols = set(meta.schema_arrow.names)
            if "conversations" not in cols:
                raise SourceError(
                    f"{f}: parquet needs a 'conversations' column, has {sorted(cols)}"
                )
            n = meta.metadata.num_rows
            starts, row, largest = [], 0, 0
            for g in range(meta.num_row_groups):
                starts.append(row)
                row += meta.metadata.row_group(g).num_rows
                largest = max(largest, meta.metadata.row_group(g).total_byte_size)
            if largest > LARGE_ROW_GROUP:
                log.warning(
                    "%s: a row group of %.0f MiB; each build worker holds one in memory "
                    "(rewrite the file with smaller row groups, e.g. pq.write_table(..., "
                    "row_group_size=100), to need less)",
                    f,
                    largest / 2**20,
                )
            self.group_starts[f] = starts or [0]
            self.columns[f] = [c for c in COLUMNS if c in cols]
            self.offsets.append((f, total, total + n))
            total += n
        self.total = total
        self._stream: _RowStream | None = None  # opened lazily: in the build's worker

    def __len__(self) -> int:
        return self.total

    def input_files(self) -> list[Path]:
        return self.files

    def seek_points(self) -> list[int]:
        """Source indices where a read can start without decoding earlier rows (each row
        group's first row): the build keeps shards between two of them in one worker."""
        return [lo + s for f, lo, _ in self.offsets for s in self.group_starts[f]] + [self.total]

    def records(self, start: int, stop: int) -> Iterator[RawRecord]:
        for f, lo, hi in self.offsets:
            if hi <= start or lo >= stop:
                continue
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            for row_index, row in self._open(f, a).take(a, b):
                yield self._record(lo + row_index, f, row)

    def _open(self, f: Path, a: int) -> _RowStream:
        """The stream of `f` positioned at or before row `a`: the open one when it is there
        (the previous read stopped at or before `a` in the same row group), else a new one
        from `a`'s row group."""
        starts = self.group_starts[f]
        group = bisect.bisect_right(starts, a) - 1
        s = self._stream
        if s is None or s.path != f or not (starts[group] <= s.pos <= a):
            if s is not None:
                s.close()
            s = self._stream = _RowStream(f, starts, group, self.columns[f])
        return s

    def _record(self, index: int, f: Path, row: dict) -> RawRecord:
        sample_id = str(row.get("id") or f"{f.name}#{index}")

        def malformed(detail: str) -> RawRecord:
            return RawRecord(
                index, sample_id, [], problem="malformed_record", problem_detail=detail
            )

        conversations = row.get("conversations")
        if isinstance(conversations, str):  # some dumps store the list as a JSON string
            try:
                conversations = json.loads(conversations)
            except json.JSONDecodeError as e:
                return malformed(f"'conversations' is a string but not JSON ({e.msg})")
        if not isinstance(conversations, list):
            return malformed(
                f"'conversations' must be a list of turns, got {json_type_name(conversations)}"
            )
        image = row.get("image")
        if isinstance(image, dict):
            image = image.get("bytes")
        if image is not None and not isinstance(image, bytes):
            return malformed(
                f"'image' must be a struct {{bytes, path}} or bytes, got {json_type_name(image)}"
            )
        images = [image] if image else []
        return RawRecord(index, sample_id, conversations, images)

    def image_files(self) -> list[Path]:
        return []  # images are inside the parquet files, which the fingerprint covers
