"""LLaVA JSON (a list) or JSONL: {"id", "image": path | [paths], "conversations": [...]}."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from llava_ablate.config import SourceCfg
from llava_ablate.data.conversation import json_type_name
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


def record_from_row(index: int, path: Path, row: object, image_root: Path | None) -> RawRecord:
    """One parsed JSON row -> a record; any field of the wrong JSON type makes it a counted
    `malformed_record` named by the row's own id (or `<file>#<index>` when it has none)."""
    sample_id = f"{path.name}#{index}"

    def malformed(detail: str) -> RawRecord:
        return RawRecord(index, sample_id, [], problem="malformed_record", problem_detail=detail)

    if not isinstance(row, dict):
        return malformed(f"expected a JSON object per sample, got {json_type_name(row)}")
    raw_id = row.get("id")
    if isinstance(raw_id, str | int | float) and not isinstance(raw_id, bool):
        sample_id = str(raw_id) if str(raw_id) else sample_id
    elif raw_id is not None:
        return malformed(f"'id' must be a string or a number, got {json_type_name(raw_id)}")
    conversations = row.get("conversations")
    if not isinstance(conversations, list):
        if "conversations" not in row:
            return malformed("no 'conversations' list")
        return malformed(
            f"'conversations' must be a list of turns, got {json_type_name(conversations)}"
        )
    image = row.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        kinds = sorted({json_type_name(n) for n in names}) if isinstance(names, list) else []
        return malformed(
            "'image' must be a file name or a list of file names, got "
            + (f"a list holding {'/'.join(kinds)}" if kinds else json_type_name(image))
        )
    if any(not n.strip() for n in names):
        return malformed("'image' holds an empty file name")
    if names and image_root is None:
        return RawRecord(
            index,
            sample_id,
            conversations,
            problem="no_image_root",
            problem_detail="the row names image files but the source has no image_root",
        )
    return RawRecord(index, sample_id, conversations, [image_root / n for n in names])  # type: ignore[operator]


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

    def seek_points(self) -> None:
        return None  # in memory: any index range is cheap

    def image_files(self) -> list[Path]:
        return [p for rec in self.records(0, len(self)) for p in rec.images if isinstance(p, Path)]

    def records(self, start: int, stop: int) -> list[RawRecord]:
        return [
            record_from_row(i, *self.rows[i], self.image_root)
            for i in range(start, min(stop, len(self.rows)))
        ]
