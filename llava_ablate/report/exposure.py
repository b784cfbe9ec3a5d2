"""Per-class accuracy against concept exposure, aggregated so it can be read.

Exposure is a count of training samples that mention a class, and a mixture gives most classes
one of a few counts (the demo: 0, 3 or 60), so a per-class scatter stacks dozens of points on
three x positions where neither series nor class can be seen. Aggregating is the honest fix:
classes are grouped by exposure (each distinct count when there are few, else decades 0, 1-9,
10-99, ...), and each run gets the accuracy pooled over the questions of the group's classes
with a Wilson 95% CI, which is the statistic a reader wants ("do rarely-seen classes score
worse?"). Jitter would spread the pile but still hide which series is which; a log axis does
not separate equal counts at all. Each point's hover text names the classes it pools."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava_ablate.eval.stats import wilson_accuracy

MAX_DISTINCT = 6  # up to this many distinct exposures get one group each


def read_exposure(path: Path) -> dict[str, float]:
    """`class_name,exposure` (the `llava-ablate data exposure` table)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"class_name", "exposure"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns class_name,exposure")
    return {r["class_name"]: float(r["exposure"]) for r in rows}


@dataclass(frozen=True)
class ExposureBin:
    label: str  # "0", "60", "10-99"
    lo: float  # inclusive
    hi: float  # exclusive

    def holds(self, x: float) -> bool:
        return self.lo <= x < self.hi


def exposure_bins(values: list[float]) -> list[ExposureBin]:
    distinct = sorted(set(values))
    if len(distinct) <= MAX_DISTINCT:
        return [ExposureBin(f"{v:g}", v, math.nextafter(v, math.inf)) for v in distinct]
    out = [ExposureBin("0", 0, 1)] if min(distinct) < 1 else []
    top = max(distinct)
    decade = 0
    while 10**decade <= top:
        lo, hi = 10**decade, 10 ** (decade + 1)
        if any(lo <= v < hi for v in distinct):
            out.append(ExposureBin(f"{lo:,}-{hi - 1:,}", lo, hi))
        decade += 1
    return out


@dataclass
class BinAccuracy:
    value: float
    ci_low: float
    ci_high: float
    questions: int
    classes: list[str]


def binned_accuracy(
    per_class: list[dict], exposure: dict[str, float], bins: list[ExposureBin]
) -> list[BinAccuracy | None]:
    """Accuracy pooled over the questions of each bin's classes (per_class.csv rows: n and
    accuracy per class), with a Wilson CI; None for a bin with no class of this run."""
    out: list[BinAccuracy | None] = []
    for b in bins:
        rows = [r for r in per_class if r["class_name"] in exposure
                and b.holds(exposure[r["class_name"]])]  # fmt: skip
        n = sum(int(r["n"]) for r in rows)
        if not n:
            out.append(None)
            continue
        right = sum(round(float(r["accuracy"]) * int(r["n"])) for r in rows)
        est = wilson_accuracy(np.arange(n) < right)
        out.append(BinAccuracy(est.value, est.ci_low, est.ci_high, n,
                               [r["class_name"] for r in rows]))  # fmt: skip
    return out
