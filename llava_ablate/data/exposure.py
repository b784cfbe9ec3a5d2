"""How often a mixture's text mentions each class of a classification dataset.

The paper explains MLLMs' gains on hard classes partly by "exposure of the target concepts" in
the training data; this table lets the evaluator relate per-class accuracy to it. Matching is a
phrase index over word tokens (one pass over each sample's text, whatever the number of
classes), not a regex per class per sample.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.data.mixture import BuiltMixture
from llava_ablate.data.stream import read_segments, source_segments

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _variants(tokens: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The phrase and its simple plurals ("ferret" -> "ferrets", "fox" -> "foxes")."""
    last = tokens[-1]
    plurals = {last + "s", last + "es"}
    if last.endswith("y"):
        plurals.add(last[:-1] + "ies")
    return {tokens} | {tokens[:-1] + (p,) for p in plurals}


@dataclass
class Concept:
    name: str
    phrases: list[str]  # the name and its synonyms


def load_concepts(path: Path) -> list[Concept]:
    """JSON {name: [synonyms]}, or text/CSV lines `name[,synonym;synonym...]`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class names file {path} not found")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return [Concept(name, [name, *syn]) for name, syn in data.items()]
    concepts = []
    for row in csv.reader(path.read_text().splitlines()):
        if row and row[0].strip():
            syn = [s.strip() for s in ";".join(row[1:]).split(";") if s.strip()]
            concepts.append(Concept(row[0].strip(), [row[0].strip(), *syn]))
    return concepts


class PhraseIndex:
    def __init__(self, concepts: list[Concept]):
        self.concepts = concepts
        self.by_first: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for k, concept in enumerate(concepts):
            variants = set()  # "black-footed ferret" and "black footed ferret" are one phrase
            for phrase in concept.phrases:
                tokens = tuple(words(phrase))
                variants |= _variants(tokens) if tokens else set()
            for variant in sorted(variants):
                self.by_first.setdefault(variant[0], []).append((variant, k))

    def mentions(self, text: str) -> dict[int, int]:
        """concept index -> number of mentions in `text`. Leftmost-longest, without overlaps:
        "t-shirt" is one mention of t-shirt, not also one of shirt ("sea lion" is no lion)."""
        tokens = words(text)
        found: dict[int, int] = {}
        i = 0
        while i < len(tokens):
            hits = [(len(p), k) for p, k in self.by_first.get(tokens[i], ())
                    if tuple(tokens[i : i + len(p)]) == p]  # fmt: skip
            if not hits:
                i += 1
                continue
            n = max(length for length, _ in hits)
            for k in {k for length, k in hits if length == n}:  # a phrase two classes share
                found[k] = found.get(k, 0) + 1
            i += n
        return found


def mixture_texts(mixture: BuiltMixture) -> Iterator[str]:
    """Every selected sample's conversation text, once (up-sampling weights not applied)."""
    for source in mixture.sources:
        for sample in read_segments(source_segments(source), rebuild=mixture.rebuild_command):
            meta = json.loads(sample["json"])
            yield "\n".join(str(t.get("value", "")) for t in meta["conversations"])


def exposure_table(texts: Iterable[str], concepts: list[Concept]) -> list[dict]:
    index = PhraseIndex(concepts)
    samples = [0] * len(concepts)
    mentions = [0] * len(concepts)
    for text in texts:
        for k, n in index.mentions(text).items():
            samples[k] += 1
            mentions[k] += n
    return [
        {"class_name": c.name, "exposure": samples[k], "mentions": mentions[k]}
        for k, c in enumerate(concepts)
    ]


def write_exposure(rows: list[dict], path: Path) -> None:
    """CSV `class_name,exposure,mentions`: exposure = samples that mention the class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["class_name", "exposure", "mentions"])
        writer.writeheader()
        writer.writerows(rows)
