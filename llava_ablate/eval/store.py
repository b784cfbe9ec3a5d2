"""Per-question predictions on disk: appended as they are made, so a crashed run resumes.

Each rank appends to its own `predictions.rank<r>.jsonl` (flushed per batch); at the end rank 0
merges everything into `predictions.jsonl`, de-duplicated and in question order. A line cut off
by a crash is ignored, and its question is simply scored again. Questions skipped for an
unreadable image go the same way into `skipped.rank<r>.jsonl` -> `skipped.jsonl`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from llava_ablate.base.files import atomic_write
from llava_ablate.eval.scoring import Prediction, Skip

MERGED = "predictions.jsonl"
SKIPPED = "skipped.jsonl"


def _read(path: Path, kind: type = Prediction) -> list:
    out = []
    for line in path.read_text("utf-8").splitlines():
        try:
            out.append(kind(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue  # the torn last line of a crashed writer
    return out


def read_skips(directory: Path) -> list[Skip]:
    """The skipped questions a finished evaluation recorded in `directory` (none: [])."""
    path = Path(directory) / SKIPPED
    return _read(path, Skip) if path.exists() else []


def _append_lines(path: Path, rows: list[dict]) -> None:
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if torn:  # a crash cut the last line: start on a fresh one, never glue onto it
            fh.write("\n")
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class PredictionStore:
    def __init__(self, directory: Path, rank: int = 0, part: str = ""):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        # `.shard<i>`: an array task of a sharded evaluation writes files of its own.
        self.part = part

    def _files(self) -> list[Path]:
        merged = self.dir / MERGED
        return ([merged] if merged.exists() else []) + sorted(
            self.dir.glob("predictions.rank*.jsonl")
        )

    def load(self) -> list[Prediction]:
        """Every prediction made so far (first occurrence of each (question, shift, scorer))."""
        seen: dict[tuple[str, str], Prediction] = {}
        for f in self._files():
            for p in _read(f):
                seen.setdefault((p.key, p.scorer), p)
        return list(seen.values())

    def done(self, scorers: list[str]) -> set[str]:
        """Unit keys (qid@shift) that have a prediction for every scorer."""
        have: dict[str, set[str]] = {}
        for p in self.load():
            have.setdefault(p.key, set()).add(p.scorer)
        return {k for k, s in have.items() if set(scorers) <= s}

    def _skip_files(self) -> list[Path]:
        merged = self.dir / SKIPPED
        return ([merged] if merged.exists() else []) + sorted(self.dir.glob("skipped.rank*.jsonl"))

    def clear(self) -> None:
        for f in self._files() + self._skip_files():
            f.unlink()

    def append(self, preds: list[Prediction]) -> None:
        name = f"predictions.rank{self.rank}{self.part}.jsonl"
        _append_lines(self.dir / name, [asdict(p) for p in preds])

    def append_skips(self, skips: list[Skip]) -> None:
        name = f"skipped.rank{self.rank}{self.part}.jsonl"
        _append_lines(self.dir / name, [asdict(s) for s in skips])

    def load_skips(self) -> list[Skip]:
        """Every skipped question recorded so far, once per question id."""
        seen: dict[str, Skip] = {}
        for f in self._skip_files():
            for s in _read(f, Skip):
                seen.setdefault(s.qid, s)
        return list(seen.values())

    def merge(self, order: list[str]) -> list[Prediction]:
        """Write the merged file in `order` (unit keys) and drop the per-rank files."""
        rank_of = {k: i for i, k in enumerate(order)}
        preds = sorted(self.load(), key=lambda p: (rank_of.get(p.key, len(order)), p.scorer))
        self._replace_rank_files(MERGED, "predictions.rank*.jsonl", preds)
        return preds

    def merge_skips(self, keep: set[str]) -> list[Skip]:
        """Write `skipped.jsonl` with the skips of the question ids in `keep` (sorted by id) and
        drop the per-rank files: a question scored on a later attempt is no longer skipped."""
        skips = sorted((s for s in self.load_skips() if s.qid in keep), key=lambda s: s.qid)
        self._replace_rank_files(SKIPPED, "skipped.rank*.jsonl", skips)
        return skips

    def _replace_rank_files(self, name: str, rank_files: str, rows: list) -> None:
        """Write `rows` (dataclasses) to `name` as JSON lines, then drop the per-rank files."""
        with atomic_write(self.dir / name) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(asdict(row)) + "\n")
        for f in self.dir.glob(rank_files):
            f.unlink()
