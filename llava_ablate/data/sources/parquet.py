"""LLaVA-OneVision-Data style parquet: `id`, `image` ({bytes, path} or bytes), `conversations`."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow.parquet as pq

from llava_ablate.config import SourceCfg
from llava_ablate.data.conversation import json_type_name
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
