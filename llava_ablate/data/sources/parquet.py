"""LLaVA-OneVision-Data style parquet: `id`, `image` ({bytes, path} or bytes), `conversations`."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow.parquet as pq

from llava_ablate.config import SourceCfg
from llava_ablate.data.sources import RawRecord, SourceError, require_files


class ParquetReader:
    def __init__(self, src: SourceCfg):
        self.src = src
        self.files = sorted(Path(p) for p in glob.glob(src.path)) or [Path(src.path)]
        require_files(self.files, f"source {src.name!r}")
        # Row offsets per file, so an index range maps to (file, row) without reading everything.
        self.offsets: list[tuple[Path, int, int]] = []
        total = 0
        for f in self.files:
            meta = pq.ParquetFile(f)
            cols = set(meta.schema_arrow.names)
            if "conversations" not in cols:
                raise SourceError(
                    f"{f}: parquet needs a 'conversations' column, has {sorted(cols)}"
                )
            self.offsets.append((f, total, total + meta.metadata.num_rows))
            total += meta.metadata.num_rows
        self.total = total

    def __len__(self) -> int:
        return self.total

    def input_files(self) -> list[Path]:
        return self.files

    def records(self, start: int, stop: int) -> list[RawRecord]:
        out: list[RawRecord] = []
        for f, lo, hi in self.offsets:
            if hi <= start or lo >= stop:
                continue
            table = pq.read_table(f)  # one file per call; shards stay within a few files
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            for k, row in enumerate(table.slice(a, b - a).to_pylist()):
                out.append(self._record(lo + a + k, f, row))
        return out

    def _record(self, index: int, f: Path, row: dict) -> RawRecord:
        sample_id = str(row.get("id") or f"{f.name}#{index}")
        conversations = row.get("conversations")
        if isinstance(conversations, str):  # some dumps store the list as a JSON string
            try:
                conversations = json.loads(conversations)
            except json.JSONDecodeError:
                return RawRecord(index, sample_id, [], problem="malformed_record")
        if not isinstance(conversations, list):
            return RawRecord(index, sample_id, [], problem="malformed_record")
        image = row.get("image")
        if isinstance(image, dict):
            image = image.get("bytes")
        images = [image] if image else []
        return RawRecord(index, sample_id, conversations, images)
