"""Per-question predictions on disk: appended as they are made, so a crashed run resumes.

Each rank appends to its own `predictions.rank<r>.jsonl` (flushed per batch); at the end rank 0
merges everything into `predictions.jsonl`, de-duplicated and in question order. A line cut off
by a crash is ignored, and its question is simply scored again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from llava_ablate.eval.scoring import Prediction

MERGED = "predictions.jsonl"


def _read(path: Path) -> list[Prediction]:
    out = []
    for line in path.read_text("utf-8").splitlines():
        try:
            out.append(Prediction(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue  # the torn last line of a crashed writer
    return out


class PredictionStore:
    def __init__(self, directory: Path, rank: int = 0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank

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

    def clear(self) -> None:
        for f in self._files():
            f.unlink()

    def append(self, preds: list[Prediction]) -> None:
        path = self.dir / f"predictions.rank{self.rank}.jsonl"
        torn = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        with open(path, "a", encoding="utf-8") as fh:
            if torn:  # a crash cut the last line: start on a fresh one, never glue onto it
                fh.write("\n")
            for p in preds:
                fh.write(json.dumps(asdict(p)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def merge(self, order: list[str]) -> list[Prediction]:
        """Write the merged file in `order` (unit keys) and drop the per-rank files."""
        rank_of = {k: i for i, k in enumerate(order)}
        preds = sorted(self.load(), key=lambda p: (rank_of.get(p.key, len(order)), p.scorer))
        tmp = self.dir / (MERGED + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in preds:
                fh.write(json.dumps(asdict(p)) + "\n")
        tmp.replace(self.dir / MERGED)
        for f in self.dir.glob("predictions.rank*.jsonl"):
            f.unlink()
        return preds
