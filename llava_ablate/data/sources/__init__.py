"""Readers for the source formats a mixture can declare; each yields RawRecords by index.

A reader is opened once (in the parent of the build's worker processes) and then read by index
ranges, so conversion can be split into fixed, deterministic shards. JSON and classification
sources are loaded whole (the workers share them by fork); parquet sources are streamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from llava_ablate.config import DataCfg, SourceCfg


class SourceError(ValueError):
    """A source file is missing, unreleased or malformed; the message names it."""


@dataclass
class RawRecord:
    index: int  # position in the source (before any skipping): keys shards deterministically
    id: str
    conversations: list[dict]
    images: list[Path | bytes] = field(default_factory=list)  # files, or encoded image bytes
    problem: str | None = None  # set when the row itself is unusable (counted, never dropped)
    problem_detail: str = ""  # what was wrong with it, for skipped.jsonl


class SourceReader(Protocol):
    def __len__(self) -> int: ...

    def records(self, start: int, stop: int) -> Iterable[RawRecord]: ...

    def input_files(self) -> list[Path]: ...

    def image_files(self) -> list[Path]: ...  # images read from disk (for the staleness check)

    # Indices where a read can start without decoding earlier rows (and len(self)); None when
    # the whole source is in memory. The build keeps shards between two of them in one worker.
    def seek_points(self) -> list[int] | None: ...


def unreleased_sources(data: DataCfg) -> str | None:
    """Why the mixture cannot be built or read, if it lists never-published sources."""
    names = [f"{s.name} ({s.path})" for s in data.sources if not s.released]
    if not names:
        return None
    return (
        f"mixture {data.name!r} lists {len(names)} source(s) that were never released: {names}; "
        f"remove them from data_recipes/{data.name}.yaml or point them at your own files"
    )


def open_source(src: SourceCfg, seed: int = 0) -> SourceReader:
    if not src.released:
        raise SourceError(
            f"source {src.name!r} ({src.path}) was never released; remove it from the mixture "
            "or point it at your own files"
        )
    if src.format == "llava_json":
        from llava_ablate.data.sources.llava_json import LlavaJsonReader

        return LlavaJsonReader(src)
    if src.format == "parquet":
        from llava_ablate.data.sources.parquet import ParquetReader

        return ParquetReader(src)
    if src.format == "classification":
        from llava_ablate.data.sources.classification import ClassificationReader

        return ClassificationReader(src, seed)
    raise SourceError(f"source {src.name!r}: unknown format {src.format!r}")


def require_files(paths: list[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SourceError(
            f"{what}: {len(missing)} file(s) not found, e.g. {missing[:3]}; download them or set "
            "paths.data_root (env LLAVA_DATA_ROOT) to the directory that holds them"
        )
