"""Read LLaVA-format JSON/JSONL sources and apply each source's sampling strategy."""

from __future__ import annotations

import json
import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_ablate.config import SourceCfg

log = logging.getLogger(__name__)

_STRATEGY = re.compile(r"^(all|first:(\d+(?:\.\d+)?)%|end:(\d+(?:\.\d+)?)%|random:(\d+))$")


class DataSourceError(ValueError):
    """A source file is missing, unreleased or malformed; the message names it."""


@dataclass
class Record:
    id: str
    conversations: list[dict[str, Any]]
    images: list[Path]  # absolute paths, in <image> order; empty for text-only samples
    source: str


def check_sampling(strategy: str, where: str) -> None:
    if not _STRATEGY.match(strategy):
        raise DataSourceError(
            f"{where}: sampling={strategy!r}; use all, first:N%, end:N% or random:N"
        )


def apply_sampling(items: list, strategy: str, seed: int) -> list:
    m = _STRATEGY.match(strategy)
    assert m, strategy
    if strategy == "all":
        return items
    if m.group(2):
        return items[: math.ceil(len(items) * float(m.group(2)) / 100)]
    if m.group(3):
        k = math.ceil(len(items) * float(m.group(3)) / 100)
        return items[len(items) - k :]
    n = int(m.group(4))
    return random.Random(seed).sample(items, min(n, len(items)))


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataSourceError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        return rows
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise DataSourceError(f"{path}: expected a JSON list of samples, got {type(rows).__name__}")
    return rows


def _to_record(row: Any, index: int, path: Path, image_root: Path | None) -> Record | str:
    """A Record, or the reason the row is malformed (counted by the caller)."""
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        return "malformed_record"
    sample_id = str(row.get("id", f"{path.name}#{index}"))
    image = row.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else list(image)
    if names and image_root is None:
        return "no_image_root"
    return Record(
        id=sample_id,
        conversations=row["conversations"],
        images=[image_root / n for n in names],
        source=path.name,
    )


def load_sources(sources: list[SourceCfg], seed: int) -> tuple[list[Record], dict[str, int]]:
    """All records of a mixture, plus per-reason counts of rows that could not be read."""
    unreleased = [s.path for s in sources if not s.released]
    if unreleased:
        raise DataSourceError(
            f"{len(unreleased)} source(s) of this mixture were never released, e.g. "
            f"{unreleased[:3]}; remove them from the data config or point them at your own files"
        )
    missing = [s.path for s in sources if not Path(s.path).is_file()]
    if missing:
        raise DataSourceError(
            f"{len(missing)} data file(s) not found: {missing[:5]}; download them or set "
            "paths.data_root (env LLAVA_DATA_ROOT) to the directory that holds them"
        )
    records: list[Record] = []
    bad: dict[str, int] = {}
    for k, src in enumerate(sources):
        check_sampling(src.sampling, f"data.sources[{k}] ({src.path})")
        path = Path(src.path)
        rows = apply_sampling(_read_rows(path), src.sampling, seed)
        root = Path(src.image_root) if src.image_root else None
        kept = 0
        for i, row in enumerate(rows):
            rec = _to_record(row, i, path, root)
            if isinstance(rec, str):
                bad[rec] = bad.get(rec, 0) + 1
            else:
                records.append(rec)
                kept += 1
        log.info("data source %s: %d samples (%s)", path.name, kept, src.sampling)
    return records, bad
