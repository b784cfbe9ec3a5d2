"""The terminal summary of a 2 x 2 grid (LLM x data) against its zero-shot baseline, read from
the results files exactly as the report reads them: the same rows (seeds aggregated, the
zero-shot row first), the same intervals (tables.py: Wilson for one accuracy, the bootstrap
for means), then the wall time and the two findings, one sentence each, as paired deltas on the
same frozen questions with compare.py's intervals (paired bootstrap for one seed a side, seeds x
questions bootstrap for several)."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from llava_ablate.report.collect import DatasetResult
from llava_ablate.report.command import build
from llava_ablate.report.compare import Delta, Variant, compare_results, group_variants, hard_gap
from llava_ablate.report.tables import (
    PaperTable,
    beyond_axes_lines,
    build_table,
    interval_text,
    value_text,
)

LLM, DATA = "llm", "data"


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def table_lines(t: PaperTable) -> list[str]:
    """`average` and `hard` of every row (with one dataset: that dataset's accuracies)."""
    head = t.datasets[0] if len(t.datasets) == 1 else "average"
    lines = [f"{f'variant ({t.scorer})':<44} {'seeds':>5}  {head + ' [95% CI]':>26}  "
             f"{'hard classes [95% CI]':>26}"]  # fmt: skip
    for row in t.rows:
        cells = []
        for c in (row.average, row.hard):
            cells.append("-" if c is None else f"{value_text(c)} {interval_text(c)}")
        label = row.label + (" (baseline)" if row.baseline else "")
        seeds = "-" if row.zero_shot else str(len(row.seeds))
        lines.append(f"{label:<44} {seeds:>5}  {cells[0]:>26}  {cells[1]:>26}")
    return lines + beyond_axes_lines(t)


def _variant(variants: list[Variant], llm: str, data: str) -> Variant | None:
    found = [v for v in variants if not v.zero_shot
             and v.runs[0].axes.get(LLM) == llm and v.runs[0].axes.get(DATA) == data]  # fmt: skip
    return found[0] if len(found) == 1 else None


def paired_delta(a: Variant, b: Variant, dataset: str, hard: bool, n_boot: int, seed: int) -> Delta:
    """b - a on `dataset` (its hard classes' questions with `hard`), paired on the questions."""

    def results(v: Variant) -> list[DatasetResult]:
        out = [r.datasets[dataset] for r in v.runs]
        return [ds.hard_only() for ds in out] if hard else out

    return compare_results(b.label, dataset, [*results(a), *results(b)], len(a.runs), n_boot, seed)


def _pp(d: Delta) -> str:
    """The delta, its 95% interval, what it pools, and whether the interval excludes zero (the
    finding holds) or includes it (it does not, at this sample size)."""
    c = d.comparison
    holds = c.delta_ci_low > 0 or c.delta_ci_high < 0
    return (f"{100 * c.delta:+.1f} pp [{100 * c.delta_ci_low:+.1f}, {100 * c.delta_ci_high:+.1f}]"
            f" ({d.seeds}; {'excludes' if holds else 'includes'} 0)")  # fmt: skip


def finding(variants: list[Variant], axis: str, pair: tuple[str, str], across: tuple[str, ...],
            dataset: str, n_boot: int, seed: int, scorer: str = "") -> str:  # fmt: skip
    """One sentence: pair[1] - pair[0] on `axis`, the other axis held at each of `across`, on
    the hard classes and on all questions."""
    other = DATA if axis == LLM else LLM
    parts = []
    for option in across:
        a, b = (_variant(variants, *((p, option) if axis == LLM else (option, p))) for p in pair)
        if a is None or b is None:
            parts.append(f"{other}={option}: not run")
            continue
        overall = _pp(paired_delta(a, b, dataset, False, n_boot, seed))
        gap = hard_gap([r.datasets[dataset] for r in (*a.runs, *b.runs)])
        hard = f"none ({gap})" if gap else _pp(paired_delta(a, b, dataset, True, n_boot, seed))
        parts.append(f"{other}={option}: hard classes {hard}, all questions {overall}")
    what = "same stage-2 samples" if axis == LLM else "same LLM"
    on = f"{dataset}, {scorer}" if scorer else dataset
    return f"{axis.upper()} axis, {pair[1]} - {pair[0]} ({what}, {on}): " + "; ".join(
        parts) + "."  # fmt: skip


def grid_summary(
    paths: list[Path],
    *,
    scorers: list[str],
    llms: tuple[str, str],
    data: tuple[str, str],
    wall_s: float | None,
    n_boot: int = 2000,
    seed: int = 0,
) -> str:
    """The summary of the runs below `paths` (trained runs and the zero-shot results): a table
    per scorer, the wall time, then the LLM-axis finding (llms[1] - llms[0], each data arm) and
    the data-axis finding (data[1] - data[0], each LLM) on `scorers[0]`, and the LLM-axis
    finding on each other scorer. 95% intervals, each saying whether it excludes 0."""
    lines: list[str] = []
    findings: list[str] = []
    for i, scorer in enumerate(scorers):
        args = Namespace(paths=[str(p) for p in paths], scorer=scorer, baseline=None,
                         bootstrap=n_boot, seed=seed)  # fmt: skip
        runs, base, items = build(args)
        table = build_table(runs, base, items, scorer=scorer, n_boot=n_boot, seed=seed)
        lines += [*table_lines(table), ""]
        if not table.datasets:
            continue
        variants, dataset = group_variants(runs), table.datasets[0]
        if i == 0:
            findings = [finding(variants, LLM, llms, data, dataset, n_boot, seed, scorer),
                        finding(variants, DATA, data, llms, dataset, n_boot, seed, scorer)]  # fmt: skip
        else:  # the LLM axis on the other answer formats too (the demo: the A-Z letter)
            findings.append(finding(variants, LLM, llms, data, dataset, n_boot, seed, scorer))
    lines.append("Intervals: Wilson for one run's accuracy, the percentile bootstrap over "
                 f"questions and seeds ({n_boot} resamples, seed {seed}) for a mean over seeds "
                 "and for every delta (paired on the same questions).")  # fmt: skip
    if wall_s is not None:
        lines.append(f"Wall time: {_minutes(wall_s)}.")
    return "\n".join(lines + findings)
