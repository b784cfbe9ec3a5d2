"""The paper-style table, one model for every output (HTML, Markdown, CSV, LaTeX, the demo's
terminal summary): one row per variant (its seeds aggregated: mean, sd, n seeds), the zero-shot
baselines first, then the grid's order (collect.grid_order); datasets as columns plus their
`average` and the hard-class accuracy `hard`; the baseline row marked and the cells that differ
significantly from it flagged.

One interval method per quantity, everywhere:
- one accuracy (one run on one dataset, all questions or the hard classes' ones): the results
  file's Wilson 95% interval;
- a mean over seeds and/or over datasets (`average`, `hard` with several datasets, any cell of
  a variant with several seeds): the percentile bootstrap over questions and seeds
  (report/intervals.py; `n_boot` resamples, seed `seed`, stated in the footnote). With one
  dataset `average` and `hard` *are* that dataset's accuracies and carry their intervals.
Flags are paired tests against the baseline on the same frozen questions: a dataset cell uses
compare.py's test (the exact McNemar p below `alpha` for one run a side, else its seeds x
questions delta interval excluding zero); `average`/`hard` over several datasets the paired
bootstrap of the mean delta. The question-set fingerprints of every column go in a footnote.
The files (report.md/.csv/.tex) are written by table_files.py.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from llava_ablate.eval.stats import Estimate
from llava_ablate.report.collect import DatasetResult, RunResult
from llava_ablate.report.compare import Delta, Variant, group_variants, paired_matrix
from llava_ablate.report.environment import environment_lines
from llava_ablate.report.intervals import mean_delta_interval, mean_interval

UP, DOWN = "up", "down"
WILSON, BOOTSTRAP = "wilson", "bootstrap"
ALL, HARD = "all questions", "hard classes"  # Delta.subset (compare.py)


@dataclass
class Cell:
    value: float  # fraction correct (mean over seeds / datasets where several)
    ci_low: float | None  # None: no per-question results to bootstrap (see the footnote)
    ci_high: float | None
    method: str  # WILSON | BOOTSTRAP | "" (no interval)
    n: int | None = None  # questions (summed over datasets for a mean over datasets)
    seeds: int = 1
    sd: float | None = None  # over seeds
    flag: str | None = None  # UP / DOWN: significantly better / worse than the baseline
    delta: float | None = None  # against the baseline
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    p_value: float | None = None  # exact McNemar (one run a side)


@dataclass
class TableRow:
    label: str
    baseline: bool
    zero_shot: bool
    seeds: list
    cells: dict[str, Cell | None]  # dataset -> cell (all questions)
    hard_cells: dict[str, Cell | None]  # dataset -> cell (the hard classes' questions)
    average: Cell | None
    hard: Cell | None
    differs: dict[str, Any] = field(default_factory=dict)  # keys beyond the axes -> value
    scorers: list[str] = field(default_factory=list)
    image_aspect: str = ""  # how images reached the model (pad | native | processor), joined


@dataclass
class PaperTable:
    datasets: list[str]
    rows: list[TableRow]
    fingerprints: dict[str, dict[str, list[str]]]  # dataset -> fingerprint -> row labels
    scorer: str
    alpha: float
    baseline: str
    n_boot: int
    seed: int
    gaps: list[str] = field(default_factory=list)  # cells without an interval, and why
    environment: list[str] = field(default_factory=list)  # report/environment.py's notes


def _subset(delta: Delta) -> str:
    return getattr(delta, "subset", ALL)


def significant(delta: Delta, alpha: float) -> bool:
    c = delta.comparison
    if c.mcnemar_p is not None:
        return c.mcnemar_p < alpha
    return c.delta_ci_low > 0 or c.delta_ci_high < 0


def _flag(cell: Cell, delta: float, low: float, high: float, significant_: bool) -> None:
    cell.delta, cell.delta_ci_low, cell.delta_ci_high = delta, low, high
    if significant_:
        cell.flag = UP if delta > 0 else DOWN


@dataclass
class _Side:
    """One variant's results on one dataset (all questions or the hard classes')."""

    results: list[DatasetResult]
    estimates: list[Estimate]


class _Builder:
    def __init__(self, datasets: list[str], n_boot: int, seed: int):
        self.datasets, self.n_boot, self.seed = datasets, n_boot, seed
        self.gaps: list[str] = []

    def side(self, v: Variant, name: str, hard: bool) -> _Side | None:
        """The variant's results on `name`: every run must have them (else no cell)."""
        results = [r.datasets.get(name) for r in v.runs]
        if any(ds is None for ds in results):
            return None
        if hard:
            if any(ds.hard is None for ds in results):
                return None
            return _Side([ds.hard_only() for ds in results], [ds.hard for ds in results])
        return _Side(results, [ds.accuracy for ds in results])

    def matrices(self, sides: list[_Side], name: str) -> list[np.ndarray] | None:
        """Seeds x shared questions per side (the runs of all sides paired on one question
        set), or None when a run has no per-question results."""
        results = [ds for s in sides for ds in s.results]
        if not all(ds.correct for ds in results):
            return None
        _, both, _ = paired_matrix(results, name)
        out, start = [], 0
        for s in sides:
            out.append(both[start : start + len(s.results)])
            start += len(s.results)
        return out

    def cell(self, label: str, name: str, side: _Side) -> Cell:
        ests = side.estimates
        if len(ests) == 1:  # one accuracy: its Wilson interval, from the results file
            e = ests[0]
            return Cell(e.value, e.ci_low, e.ci_high, WILSON, e.n)
        return self.mean_cell(label, name, [side])

    def mean_cell(self, label: str, what: str, sides: list[_Side]) -> Cell:
        """The mean over datasets (sides) of the mean over seeds, bootstrapped."""
        per_seed = np.mean([[e.value for e in s.estimates] for s in sides], axis=0)
        sd = statistics.stdev(per_seed) if len(per_seed) > 1 else None
        cell = Cell(float(np.mean(per_seed)), None, None, "", sum(s.estimates[0].n for s in sides),
                    len(per_seed), sd)  # fmt: skip
        mats = [self.matrices([s], what) for s in sides]
        if any(m is None for m in mats):
            self.gaps.append(f"{label}, {what}: no per-question results (predictions.jsonl), "
                             "so no bootstrap interval")  # fmt: skip
            return cell
        cell.ci_low, cell.ci_high = mean_interval([m[0] for m in mats], self.n_boot, self.seed)
        cell.method = BOOTSTRAP
        return cell

    def mean_delta(self, cell: Cell, base: list[_Side], var: list[_Side], names, alpha) -> None:
        """Flag a mean over datasets by the paired bootstrap of the mean delta."""
        pairs = [self.matrices([b, v], n) for b, v, n in zip(base, var, names, strict=True)]
        if any(p is None for p in pairs):
            return
        low, high = mean_delta_interval([p[0] for p in pairs], [p[1] for p in pairs],
                                        self.n_boot, self.seed, 1 - alpha)  # fmt: skip
        delta = float(np.mean([np.mean([e.value for e in v.estimates]) for v in var])
                      - np.mean([np.mean([e.value for e in b.estimates]) for b in base]))  # fmt: skip
        _flag(cell, delta, low, high, low > 0 or high < 0)


def build_table(
    runs: list[RunResult],
    base: Variant,
    items: list[Delta],
    *,
    scorer: str,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> PaperTable:
    """`runs` in the rows' order (collect.grid_order); `items`: compare.py's paired tests
    against `base` (all questions and hard classes)."""
    datasets = list(dict.fromkeys(d for r in runs for d in r.datasets))
    tests = {(d.variant, d.dataset, _subset(d)): d for d in items}
    b = _Builder(datasets, n_boot, seed)
    rows, fingerprints = [], {d: {} for d in datasets}
    for v in group_variants(runs):
        is_base = v.label == base.label
        row = TableRow(v.label, is_base, v.zero_shot, v.seeds, {}, {}, None, None,
                       v.runs[0].differs,
                       sorted({ds.scorer for r in v.runs for ds in r.datasets.values()}),
                       ", ".join(sorted({ds.image_aspect or "not recorded" for r in v.runs
                                         for ds in r.datasets.values()})))  # fmt: skip
        for hard, out in ((False, row.cells), (True, row.hard_cells)):
            for name in datasets:
                side = b.side(v, name, hard)
                out[name] = None if side is None else b.cell(v.label, name, side)
                delta = tests.get((v.label, name, HARD if hard else ALL))
                if out[name] is not None and delta is not None and not is_base:
                    c = delta.comparison
                    _flag(out[name], c.delta, c.delta_ci_low, c.delta_ci_high,
                          significant(delta, alpha))  # fmt: skip
                    out[name].p_value = c.mcnemar_p
                if not hard and side is not None:
                    for r in v.runs:
                        fp = r.datasets[name].fingerprint or "?"
                        labels = fingerprints[name].setdefault(fp, [])
                        if v.label not in labels:
                            labels.append(v.label)
        row.average = _mean_column(b, v, base, datasets, row.cells, False, is_base, alpha)
        with_hard = [d for d in datasets if row.hard_cells[d] is not None]
        row.hard = _mean_column(b, v, base, with_hard, row.hard_cells, True, is_base, alpha)
        rows.append(row)
    return PaperTable(datasets, rows, fingerprints, scorer, alpha, base.label, n_boot, seed,
                      b.gaps, environment_lines(runs))  # fmt: skip


def _mean_column(b: _Builder, v: Variant, base: Variant, names: list[str], cells: dict,
                 hard: bool, is_base: bool, alpha: float) -> Cell | None:  # fmt: skip
    """`average` (all datasets, each present) or `hard` (the datasets with hard classes)."""
    if not names or any(cells[n] is None for n in names):
        return None
    if len(names) == 1:  # the mean of one accuracy is that accuracy: the same cell
        return replace(cells[names[0]])
    what = f"{'hard' if hard else 'average'} over {', '.join(names)}"
    sides = [b.side(v, n, hard) for n in names]
    cell = b.mean_cell(v.label, what, sides)
    if not is_base:
        base_sides = [b.side(base, n, hard) for n in names]
        if all(s is not None for s in base_sides):
            b.mean_delta(cell, base_sides, sides, names, alpha)
    return cell


ARROWS = {UP: "↑", DOWN: "↓"}


def interval_text(c: Cell, digits: int = 1) -> str:
    """`[low, high]` in percent, or `[no interval]` (the footnote says why)."""
    if c.ci_low is None or c.ci_high is None:
        return "[no interval]"
    return f"[{100 * c.ci_low:.{digits}f}, {100 * c.ci_high:.{digits}f}]"


def value_text(c: Cell, digits: int = 1) -> str:
    """`mean ± sd` over seeds, or the accuracy, in percent."""
    sd = f" ± {100 * c.sd:.{digits}f}" if c.sd is not None else ""
    return f"{100 * c.value:.{digits}f}{sd}"


def columns(t: PaperTable) -> list[str]:
    return [*t.datasets, "average", "hard"]


def row_cells(row: TableRow, t: PaperTable) -> list[Cell | None]:
    return [*(row.cells[d] for d in t.datasets), row.average, row.hard]


def seeds_text(row: TableRow) -> str:
    return "-" if row.zero_shot else str(len(row.seeds))


def interval_note(t: PaperTable) -> str:
    return (
        "95% intervals: one accuracy (one run on one dataset) has its Wilson score interval; a "
        "mean over seeds (shown as mean ± sd over seeds) or over datasets (average, hard) has "
        f"the percentile bootstrap over questions and seeds ({t.n_boot} resamples, seed "
        f"{t.seed}). With one dataset, average and hard are that dataset's accuracies."
    )


def footnote_lines(t: PaperTable, arrows: str = "↑/↓") -> list[str]:
    zero_shot = [r.label for r in t.rows if r.zero_shot]
    lines = [
        f"Accuracy (%) of the {t.scorer} scorer"
        + (
            f" (zero-shot rows: the most similar of the same options, "
            f"{', '.join(sorted({s for r in t.rows if r.zero_shot for s in r.scorers}))})"
            if zero_shot
            else ""
        )
        + f"; seeds: training seeds per row. {interval_note(t)}",
        f"{arrows}: significantly above/below the baseline ({t.baseline}) in a paired test on the "
        f"same frozen questions (exact McNemar, p < {t.alpha}, one run a side; else the paired "
        "bootstrap interval of the delta over seeds and questions excludes 0; average and hard "
        "over several datasets: the paired bootstrap of the mean delta).",
    ]
    lines += beyond_axes_lines(t)
    lines += image_lines(t)
    lines += t.environment  # the software/hardware the rows differ in
    lines += [f"No interval: {g}." for g in t.gaps]
    lines.append("Question sets (fingerprints):")
    for d in t.datasets:
        fps = t.fingerprints[d]
        if len(fps) == 1:
            fp, labels = next(iter(fps.items()))
            lines.append(f"{d}: {fp} (all {len(labels)} rows)")
        else:
            parts = "; ".join(f"{fp}: {', '.join(labels)}" for fp, labels in fps.items())
            lines.append(f"{d}: DIFFERENT question sets -- {parts}")
    return lines


IMAGE_ASPECTS = {
    "pad": "padded to a square (LLaVA-1.5's protocol)",
    "native": "as the model's processor takes them (native resolution, tiles)",
    "processor": "the zero-shot tower's resize and centre crop",
}


def image_lines(t: PaperTable) -> list[str]:
    """How the images reached each row's model, as recorded in its metrics.json."""
    by: dict[str, list[str]] = {}
    for r in t.rows:
        by.setdefault(r.image_aspect or "not recorded", []).append(r.label)
    parts = [f"{IMAGE_ASPECTS.get(a, a)}: {', '.join(labels)}" for a, labels in by.items()]
    return ["Images as each model read them -- " + "; ".join(parts) + "."] if parts else []


def beyond_axes_lines(t: PaperTable) -> list[str]:
    """The keys in which the rows differ beyond the axes their labels name, with each row's
    value (a confound the reader must see, kept out of the labels)."""
    keys = list(dict.fromkeys(k for r in t.rows for k in r.differs))
    if not keys:
        return []
    out = ["Beyond the axes in the labels, the rows also differ in:"]
    for k in keys:
        values = "; ".join(f"{r.label}: {r.differs[k]}" for r in t.rows if k in r.differs)
        out.append(f"{k} -- {values}")
    return out
