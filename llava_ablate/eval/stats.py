"""Uncertainty for accuracies: Wilson 95% CIs for one accuracy, paired tests between two runs.

A single accuracy gets the Wilson score interval: the percentile bootstrap collapses to zero
width at 0 or 1 (every resample of 50 right answers is 50 right answers), Wilson does not, and
it keeps close to nominal coverage at small n. The bootstrap stays for deltas between runs.

Correctness is 0/1, so resampling n questions with replacement and averaging is exactly a
Binomial(n, p_hat)/n draw; paired resampling of two runs is exactly a multinomial over the four
(right/wrong, right/wrong) cells. Drawing those directly is the same bootstrap, without
materialising n x B index arrays (ImageNet: 50k x 2000).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps


@dataclass
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_accuracy(correct, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Accuracy with a percentile-bootstrap CI."""
    c = np.asarray(correct, dtype=bool)
    n = len(c)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    p = c.mean()
    draws = np.random.default_rng(seed).binomial(n, p, size=n_boot) / n
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(p), float(lo), float(hi), n)


def wilson_accuracy(correct, level: float = 0.95) -> Estimate:
    """Accuracy with the Wilson score interval (never zero-width, even at 0 or 1)."""
    c = np.asarray(correct, dtype=bool)
    n = len(c)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    ci = sps.binomtest(int(c.sum()), n).proportion_ci(confidence_level=level, method="wilson")
    return Estimate(float(c.mean()), float(ci.low), float(ci.high), n)


@dataclass
class PairedComparison:
    n: int
    acc_a: float
    acc_b: float
    delta: float  # acc_b - acc_a
    delta_ci_low: float
    delta_ci_high: float
    b_only: int  # questions only b got right
    a_only: int
    mcnemar_p: float  # exact (binomial) two-sided McNemar test
    # Questions scored in only one of the runs (e.g. an image one run could not read): left out.
    unpaired: int = 0
    paired_on: str = "all questions"  # or "shared questions" when some were left out

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs ~ Binomial(a_only + b_only, 1/2)."""
    d = a_only + b_only
    if d == 0:
        return 1.0
    return float(sps.binomtest(min(a_only, b_only), d, 0.5).pvalue)


def paired_comparison(
    correct_a, correct_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedComparison:
    """Run b vs run a on the same questions (same order): delta with a paired-bootstrap CI."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired runs need the same questions: {a.shape} vs {b.shape}")
    n = len(a)
    cells = np.array([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()])
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot)
    deltas = (draws[:, 2] - draws[:, 1]) / n
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return PairedComparison(
        n,
        float(a.mean()),
        float(b.mean()),
        float(b.mean() - a.mean()),
        float(lo),
        float(hi),
        int(cells[2]),
        int(cells[1]),
        mcnemar_exact(int(cells[1]), int(cells[2])),
    )


def paired_on_shared(
    correct_a: Mapping[str, bool],
    correct_b: Mapping[str, bool],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedComparison:
    """Runs a and b ({question id: right?}) paired on the questions both scored; the questions
    only one of them scored are counted in `unpaired` and the result says so in `paired_on`."""
    shared = [q for q in correct_a if q in correct_b]
    if not shared:
        raise ValueError(
            f"the two runs share no scored question ({len(correct_a)} vs {len(correct_b)}): "
            "were they scored on the same question set?"
        )
    result = paired_comparison(
        [correct_a[q] for q in shared], [correct_b[q] for q in shared], n_boot, seed, level
    )
    result.unpaired = len(correct_a) + len(correct_b) - 2 * len(shared)
    result.paired_on = "shared questions" if result.unpaired else "all questions"
    return result
