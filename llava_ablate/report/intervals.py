"""Percentile-bootstrap intervals for the report's means: a variant's accuracy averaged over its
seeds and/or over several datasets, and the paired difference of two such means.

Each dataset comes as a seeds x questions 0/1 matrix (rows: one run per seed, columns: the same
frozen questions). A replicate draws the questions of every dataset with replacement (one draw
shared by all rows, which keeps the pairing between runs), then the seeds of each side with
replacement (one draw shared by every dataset: a seed is one trained model). With one seed a
side this is the plain bootstrap over questions.

Resampling n questions shared by k runs is a multinomial draw over the distinct right/wrong
patterns of the k runs (at most 2^k, or n), so no n x B index array is built (ImageNet: 50k).
The percentile interval of a mean of accuracies stays inside [0, 1] by construction."""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def _per_run_accuracy(m: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot x runs: each run's accuracy on one shared resample of the questions (columns)."""
    n = m.shape[1]
    if n == 0:
        raise ValueError("no questions to resample")
    patterns, counts = np.unique(m.T.astype(bool), axis=0, return_counts=True)
    draws = rng.multinomial(n, counts / n, size=n_boot)  # n_boot x patterns
    return draws @ patterns.astype(float) / n


def _replicates(sides: list[list[np.ndarray]], n_boot: int, seed: int) -> list[np.ndarray]:
    """For each side (a list of seeds x questions matrices, one per dataset), n_boot replicates
    of the mean over datasets of its mean over seeds. The sides' matrices of one dataset are
    resampled on the same questions (paired)."""
    rng = np.random.default_rng(seed)
    k = len(sides[0])
    if any(len(s) != k for s in sides) or k == 0:
        raise ValueError("every side needs the same datasets, at least one")
    seed_draws = [rng.integers(0, len(s[0]), (n_boot, len(s[0]))) for s in sides]
    rows = np.arange(n_boot)[:, None]
    out = [np.zeros(n_boot) for _ in sides]
    for d in range(k):
        mats = [s[d] for s in sides]
        if len({m.shape[1] for m in mats}) != 1:
            raise ValueError("paired sides must hold the same questions of a dataset")
        acc = _per_run_accuracy(np.concatenate(mats), n_boot, rng)
        start = 0
        for i, m in enumerate(mats):
            side = acc[:, start : start + len(m)]
            out[i] += side[rows, seed_draws[i]].mean(1) / k
            start += len(m)
    return out


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_interval(
    datasets: list[np.ndarray], n_boot: int, seed: int, level: float = LEVEL
) -> tuple[float, float]:
    """CI of the mean over datasets of the mean over seeds of the accuracy."""
    (rep,) = _replicates([datasets], n_boot, seed)
    return _percentiles(rep, level)


def mean_delta_interval(
    base: list[np.ndarray], variant: list[np.ndarray], n_boot: int, seed: int,
    level: float = LEVEL,
) -> tuple[float, float]:  # fmt: skip
    """CI of (variant's mean) - (base's mean), each as in `mean_interval`, paired on the
    questions of every dataset."""
    a, b = _replicates([base, variant], n_boot, seed)
    return _percentiles(b - a, level)
