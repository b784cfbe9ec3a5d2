"""LLaVA JSON (a list) or JSONL: {"id", "image": path | [paths], "conversations": [...]}."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from llava_ablate.config import SourceCfg
from llava_ablate.data.sources import RawRecord, SourceError, require_files


def _read_rows(path: Path) -> list:
    if path.suffix == ".jsonl":
        rows = []
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        return rows
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise SourceError(f"{path}: expected a JSON list of samples, got {type(rows).__name__}")
    return rows


class LlavaJsonReader:
    def __init__(self, src: SourceCfg):
        self.src = src
        self.files = sorted(Path(p) for p in glob.glob(src.path)) or [Path(src.path)]
        require_files(self.files, f"source {src.name!r}")
        self.rows = [(f, row) for f in self.files for row in _read_rows(f)]
        self.image_root = Path(src.image_root) if src.image_root else None

    def __len__(self) -> int:
        return len(self.rows)

    def input_files(self) -> list[Path]:
        return self.files

    def records(self, start: int, stop: int) -> list[RawRecord]:
        return [self._record(i) for i in range(start, min(stop, len(self.rows)))]

    def _record(self, index: int) -> RawRecord:
        path, row = self.rows[index]
        if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
            return RawRecord(index, f"{path.name}#{index}", [], problem="malformed_record")
        sample_id = str(row.get("id", f"{path.name}#{index}"))
        image = row.get("image")
        names = [] if image is None else [image] if isinstance(image, str) else list(image)
        if names and self.image_root is None:
            return RawRecord(index, sample_id, row["conversations"], problem="no_image_root")
        images = [self.image_root / n for n in names]  # type: ignore[operator]
        return RawRecord(index, sample_id, row["conversations"], images)
