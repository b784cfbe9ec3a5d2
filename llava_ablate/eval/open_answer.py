"""Open answers: which class a free-text answer names, by a normalised match against every
class's name and synonyms (as open-world classification benchmarks score), and -- labelled as
such -- the class whose name a text encoder finds nearest the answer."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np

ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, articles dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    return " ".join(w for w in words if w not in ARTICLES)


def load_synonyms(path: str | None) -> dict[str, list[str]]:
    """A JSON file `{class name: [synonyms]}` (None: no synonyms)."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text("utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object {{class name: [synonyms]}}")
    return data


class OpenAnswerMatcher:
    """The class an answer names: every name or synonym found in the answer as whole words;
    the longest wins ("tiger shark" over "shark"); two classes tied at that length, or none
    found, is no match (None)."""

    def __init__(self, classnames: list[str], synonyms: dict[str, list[str]] | None = None):
        self.names = [
            (normalise(name), c)
            for c in classnames
            for name in [c, *(synonyms or {}).get(c, [])]
            if normalise(name)
        ]

    def match(self, text: str) -> str | None:
        padded = f" {normalise(text)} "
        hits = [(len(n), c) for n, c in self.names if f" {n} " in padded]
        if not hits:
            return None
        longest = max(n for n, _ in hits)
        classes = {c for n, c in hits if n == longest}
        return classes.pop() if len(classes) == 1 else None


def nearest_classes(texts: list[str], classnames: list[str], embed) -> list[str]:
    """The class whose name is nearest each text by `embed` (a TextEncoder's: L2-normalised
    rows); names and texts embedded together (the lexical encoder fits its vocabulary on both)."""
    rows = np.asarray(embed(list(classnames) + list(texts)))
    names, answers = rows[: len(classnames)], rows[len(classnames) :]
    return [classnames[int(i)] for i in np.argmax(answers @ names.T, axis=1)]
