"""Each variant against a baseline, per dataset, on the same frozen questions.

A variant is the set of runs that differ only in `train.seed` (collect.label_runs).
- One seed on each side: the accuracy delta with a paired-bootstrap 95% CI over questions and
  the exact McNemar p-value (llava_ablate/eval/stats.py). It says nothing about how much a
  retrained run would move, so the report labels it "single seed".
- Several seeds: the delta of the mean accuracies over seeds, with a two-level bootstrap 95%
  CI: each replicate draws the seeds of each side with replacement and then the questions with
  replacement (one draw shared by every run, which keeps the pairing), so the interval holds
  both training-seed and question variance. With k seeds, resampling them understates the
  between-seed variance by (k-1)/k: with fewer than 3 seeds a side read it as optimistic (the
  per-seed accuracies are listed). A side with one seed contributes no seed variance.
The hard classes get exactly the same comparison on their questions only (`hard_deltas`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llava_ablate.eval.stats import PairedComparison, paired_comparison
from llava_ablate.report.collect import DatasetResult, ResultsError, RunResult


@dataclass
class Variant:
    label: str
    runs: list[RunResult]  # one per seed, in seed order

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def zero_shot(self) -> bool:
        return any(r.zero_shot for r in self.runs)


def group_variants(runs: list[RunResult]) -> list[Variant]:
    """Runs sharing a variant label (set by label_runs), in first-seen order."""
    out: dict[str, Variant] = {}
    for r in runs:
        out.setdefault(r.variant, Variant(r.variant, [])).runs.append(r)
    for v in out.values():
        v.runs.sort(key=lambda r: (r.seed is None, str(r.seed)))
    return list(out.values())


@dataclass
class SeedComparison:
    """Variant b vs a over seeds and questions (see the module docstring)."""

    n: int  # questions
    seeds_a: int
    seeds_b: int
    acc_a: float  # mean over a's seeds
    acc_b: float
    delta: float  # acc_b - acc_a
    delta_ci_low: float
    delta_ci_high: float
    accs_a: list[float]  # per seed
    accs_b: list[float]
    method: str = "seeds x questions bootstrap"
    unpaired: int = 0  # questions some run did not score: left out
    paired_on: str = "all questions"
    mcnemar_p: float | None = None  # defined for one pair of runs only
    a_only: int | None = None
    b_only: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Delta:
    variant: str
    dataset: str
    comparison: PairedComparison | SeedComparison
    subset: str = "all questions"  # or "hard classes": the questions of the hard classes only

    @property
    def single_seed(self) -> bool:
        return isinstance(self.comparison, PairedComparison)

    @property
    def seeds(self) -> str:
        c = self.comparison
        return "single seed" if self.single_seed else f"{c.seeds_a} vs {c.seeds_b} seeds"


def pick_baseline(variants: list[Variant], baseline: str | None) -> Variant:
    """`baseline` (a variant label or one of its runs), else the first variant: with the runs
    in `grid_order`, a zero-shot baseline when there is one (the paper's comparison)."""
    if baseline is None:
        return variants[0]
    typed = _typed(baseline)  # `small_qwen2 x demo_base` for `small_qwen2 × demo_base`
    matches = [
        v for v in variants
        if typed == _typed(v.label) or any(baseline in (r.label, str(r.path), r.path.name)
                                           for r in v.runs)
    ]  # fmt: skip
    if len(matches) != 1:
        raise ResultsError(
            f"--baseline {baseline!r} matches {len(matches)} variants; choose one of "
            f"{[v.label for v in variants]}"
        )
    return matches[0]


def _typed(label: str) -> str:
    return label.replace(" × ", " x ")


def paired_matrix(results: list[DatasetResult], name: str) -> tuple[list[str], np.ndarray, int]:
    """Correctness on the questions every run scored (rows = runs), and how many questions
    some run scored but not all (an unreadable image is skipped by one run, say)."""
    ref = results[0]
    for ds in results[1:]:
        if ref.fingerprint and ds.fingerprint and ref.fingerprint != ds.fingerprint:
            raise ResultsError(
                f"{name}: {ds.source} and {ref.source} were scored on different question sets "
                f"({ds.fingerprint} vs {ref.fingerprint}); a paired test needs the same"
            )
    every = set.intersection(*(set(ds.correct) for ds in results))
    qids = [q for q in ref.correct if q in every]
    if not qids:
        raise ResultsError(
            f"{name}: {', '.join(str(ds.source) for ds in results)} share no scored question "
            "(no predictions.jsonl, or different questions)"
        )
    unpaired = len(set.union(*(set(ds.correct) for ds in results))) - len(qids)
    return qids, np.array([[ds.correct[q] for q in qids] for ds in results], dtype=bool), unpaired


def seed_question_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """CI of mean(b) - mean(a), rows = seeds, columns = the same questions (two-level bootstrap:
    seeds of each side, then questions shared by all runs)."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n * (len(a) + len(b)))))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        ia = rng.integers(0, len(a), (c, len(a)))
        ib = rng.integers(0, len(b), (c, len(b)))
        q = rng.integers(0, n, (c, n))
        acc_a = a[:, q].mean(axis=2)  # seeds x replicates
        acc_b = b[:, q].mean(axis=2)
        rows = np.arange(c)[:, None]
        out[start : start + c] = acc_b.T[rows, ib].mean(1) - acc_a.T[rows, ia].mean(1)
    lo, hi = np.quantile(out, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def deltas(variants: list[Variant], base: Variant, n_boot: int, seed: int) -> list[Delta]:
    """Each variant against the baseline on every dataset both evaluated, on all questions."""
    out = []
    for variant, name in _pairs(variants, base):
        results = [r.datasets[name] for r in (*base.runs, *variant.runs)]
        out.append(compare_results(variant.label, name, results, len(base.runs), n_boot, seed))
    return out


def hard_deltas(variants: list[Variant], base: Variant, n_boot: int, seed: int) -> list[Delta]:
    """The same paired comparisons on the hard-class questions only (the questions whose true
    class per_class.csv marks hard); `hard_gaps` says why a pair has none."""
    out = []
    for variant, name in _pairs(variants, base):
        results = [r.datasets[name] for r in (*base.runs, *variant.runs)]
        if hard_gap(results) is None:
            d = compare_results(variant.label, name, [ds.hard_only() for ds in results], len(base.runs),
                         n_boot, seed)  # fmt: skip
            d.subset = "hard classes"
            out.append(d)
    return out


def hard_gaps(variants: list[Variant], base: Variant) -> list[str]:
    """Why a (variant, dataset) pair with hard classes has no hard-class delta."""
    out = []
    for variant, name in _pairs(variants, base):
        why = hard_gap([r.datasets[name] for r in (*base.runs, *variant.runs)])
        if why:
            out.append(f"{variant.label} vs {base.label} on {name}: {why}")
    return out


def hard_gap(results: list[DatasetResult]) -> str | None:
    sets = {ds.hard_classes for ds in results}
    if sets == {frozenset()}:
        return "no hard classes in these evaluations"
    if len(sets) > 1:  # the two accuracies would be over different questions
        return "the runs mark different classes hard, so there is no paired hard-class delta"
    if not all(ds.hard_only().correct for ds in results):
        return "no per-question results (predictions.jsonl) for the hard classes"
    return None


def _pairs(variants: list[Variant], base: Variant):
    """(variant, dataset) for every non-baseline variant and dataset all their runs scored."""
    for variant in variants:
        if variant is base:
            continue
        names = [n for n in variant.runs[0].datasets if all(n in r.datasets for r in variant.runs)]
        for name in names:
            if all(name in r.datasets for r in base.runs):
                yield variant, name


def compare_results(
    label: str, name: str, results: list[DatasetResult], n_base: int, n_boot: int, seed: int
) -> Delta:
    """Baseline runs (the first n_base results) against the variant's, paired on questions."""
    _, both, unpaired = paired_matrix(results, name)
    a, b = both[:n_base], both[n_base:]
    if len(a) == len(b) == 1:
        comparison = paired_comparison(a[0], b[0], n_boot, seed)
    else:
        lo, hi = seed_question_bootstrap(a, b, n_boot, seed)
        accs_a, accs_b = a.mean(1).tolist(), b.mean(1).tolist()
        comparison = SeedComparison(
            a.shape[1], len(a), len(b), float(np.mean(accs_a)), float(np.mean(accs_b)),
            float(np.mean(accs_b) - np.mean(accs_a)), lo, hi, accs_a, accs_b,
        )  # fmt: skip
    comparison.unpaired = unpaired  # left out: scored by some of the runs only
    comparison.paired_on = "shared questions" if unpaired else "all questions"
    return Delta(label, name, comparison)


@dataclass
class SeedSpread:
    """One variant's accuracy on one dataset over its seeds (from the results files)."""

    variant: str
    dataset: str
    seeds: list
    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else float("nan")


def seed_spreads(variants: list[Variant]) -> list[SeedSpread]:
    """Mean and spread over seeds, for every variant with more than one seed."""
    out = []
    for v in variants:
        if len(v.runs) < 2:
            continue
        for name in sorted({d for r in v.runs for d in r.datasets}):
            runs = [r for r in v.runs if name in r.datasets]
            out.append(SeedSpread(v.label, name, [r.seed for r in runs],
                                  [r.datasets[name].accuracy.value for r in runs]))  # fmt: skip
    return out
