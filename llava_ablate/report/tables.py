"""The paper-style table: models as rows, datasets as columns plus their average and the
hard-class accuracy, each cell with its 95% CI, the baseline row marked and the cells that
differ significantly from the baseline flagged -- as Markdown, CSV and LaTeX (booktabs).

Every figure comes from the results files (collect.py) or the paired tests of compare.py:
- a dataset cell is the results file's accuracy and Wilson 95% CI, in percent;
- its flag is the paired test against the baseline on the same frozen questions: the exact
  McNemar p-value below `alpha` (one seed a side), or, over seeds, a delta interval (seeds x
  questions bootstrap) that excludes zero; up or down says which way;
- `average` is the mean over the table's datasets (a row missing one has none); its CI and its
  flag combine the per-dataset intervals (dataset accuracies, or paired deltas) as independent
  normal errors: se = sqrt(sum se_i^2) / k with se_i = CI width / (2 x 1.96);
- `hard` is the mean over datasets of the hard-class accuracy (eval.hard), CI as for the
  average; its flag combines the paired deltas on the hard classes' questions
  (compare.py's `hard_deltas`, `Delta.subset == "hard classes"`) the same way, when present.
The question-set fingerprints of every column go in a footnote: one per column means every row
answered the identical questions (the paired tests refuse anything else).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.eval.stats import Estimate
from llava_ablate.report.collect import RunResult
from llava_ablate.report.compare import Delta, Variant

Z95 = 1.959963984540054
UP, DOWN = "up", "down"


@dataclass
class Cell:
    value: float  # fraction correct
    ci_low: float
    ci_high: float
    n: int | None = None
    flag: str | None = None  # UP / DOWN: significantly better / worse than the baseline
    delta: float | None = None  # against the baseline
    p_value: float | None = None


@dataclass
class TableRow:
    label: str
    baseline: bool
    cells: dict[str, Cell | None]  # dataset -> cell
    average: Cell | None
    hard: Cell | None


@dataclass
class PaperTable:
    datasets: list[str]
    rows: list[TableRow]
    fingerprints: dict[str, dict[str, list[str]]]  # dataset -> fingerprint -> row labels
    scorer: str
    alpha: float
    baseline: str


ALL, HARD = "all questions", "hard classes"  # Delta.subset (compare.py)


def _subset(delta: Delta) -> str:
    return getattr(delta, "subset", ALL)


def _combined_delta(cell: Cell, deltas: list) -> None:
    """Set `cell`'s delta and flag from per-dataset paired deltas (all must be there)."""
    if not deltas or not all(deltas):
        return
    mean, low, high = _combined([(d.comparison.delta, d.comparison.delta_ci_low,
                                  d.comparison.delta_ci_high) for d in deltas])  # fmt: skip
    cell.delta = mean
    if low > 0 or high < 0:
        cell.flag = UP if mean > 0 else DOWN


def significant(delta: Delta, alpha: float) -> bool:
    c = delta.comparison
    if c.mcnemar_p is not None:
        return c.mcnemar_p < alpha
    return c.delta_ci_low > 0 or c.delta_ci_high < 0


def _se(low: float, high: float) -> float:
    return (high - low) / (2 * Z95)


def _combined(values: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Mean of k estimates (value, low, high) and its normal 95% CI (independent errors)."""
    k = len(values)
    mean = sum(v for v, _, _ in values) / k
    se = math.sqrt(sum(_se(lo, hi) ** 2 for _, lo, hi in values)) / k
    return mean, mean - Z95 * se, mean + Z95 * se


def _cell(est: Estimate) -> Cell:
    return Cell(est.value, est.ci_low, est.ci_high, est.n)


def build_table(
    runs: list[RunResult],
    base: Variant,
    items: list[Delta],
    *,
    scorer: str,
    alpha: float = 0.05,
) -> PaperTable:
    datasets = list(dict.fromkeys(d for r in runs for d in r.datasets))
    by_key = {(d.variant, d.dataset): d for d in items if _subset(d) == ALL}
    hard_key = {(d.variant, d.dataset): d for d in items if _subset(d) == HARD}
    rows, fingerprints = [], {d: {} for d in datasets}
    for r in runs:
        is_base = r.variant == base.label
        cells: dict[str, Cell | None] = {}
        for name in datasets:
            ds = r.datasets.get(name)
            if ds is None:
                cells[name] = None
                continue
            fingerprints[name].setdefault(ds.fingerprint or "?", []).append(r.label)
            cell = _cell(ds.accuracy)
            delta = by_key.get((r.variant, name))
            if delta is not None:
                cell.delta = delta.comparison.delta
                cell.p_value = delta.comparison.mcnemar_p
                if significant(delta, alpha):
                    cell.flag = UP if cell.delta > 0 else DOWN
            cells[name] = cell
        average = None
        if datasets and all(cells[d] is not None for d in datasets):
            mean, lo, hi = _combined([(c.value, c.ci_low, c.ci_high) for c in cells.values()])
            average = Cell(mean, lo, hi)
            if not is_base:
                _combined_delta(average, [by_key.get((r.variant, d)) for d in datasets])
        with_hard = [d for d in datasets if d in r.datasets and r.datasets[d].hard]
        hard = None
        if with_hard:
            hards = [r.datasets[d].hard for d in with_hard]
            mean, lo, hi = _combined([(h.value, h.ci_low, h.ci_high) for h in hards])
            hard = Cell(mean, lo, hi, sum(h.n for h in hards))
            if not is_base:
                _combined_delta(hard, [hard_key.get((r.variant, d)) for d in with_hard])
        rows.append(TableRow(r.label, is_base, cells, average, hard))
    return PaperTable(datasets, rows, fingerprints, scorer, alpha, base.label)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


_ARROWS = {UP: "↑", DOWN: "↓"}


def _text_cell(c: Cell | None) -> str:
    if c is None:
        return "–"
    return f"{pct(c.value)} [{pct(c.ci_low)}, {pct(c.ci_high)}]" + _ARROWS.get(c.flag, "")


def _columns(t: PaperTable) -> list[str]:
    return [*t.datasets, "average", "hard"]


def _row_cells(row: TableRow, t: PaperTable) -> list[Cell | None]:
    return [*(row.cells[d] for d in t.datasets), row.average, row.hard]


def footnote_lines(t: PaperTable, arrows: str = "↑/↓") -> list[str]:
    lines = [
        f"Accuracy (%) of the {t.scorer} scorer with its 95% CI; {arrows}: significantly above/"
        f"below the baseline ({t.baseline}) by a paired test on the same frozen questions "
        f"(exact McNemar, p < {t.alpha}; over seeds: the seeds x questions bootstrap interval). "
        "average: mean over the datasets; hard: mean hard-class accuracy; their CIs (and "
        "flags: the paired deltas) combine the per-dataset intervals as independent normal "
        "errors.",
        "Question sets (fingerprints):",
    ]
    for d in t.datasets:
        fps = t.fingerprints[d]
        if len(fps) == 1:
            fp, labels = next(iter(fps.items()))
            lines.append(f"{d}: {fp} (all {len(labels)} rows)")
        else:
            parts = "; ".join(f"{fp}: {', '.join(labels)}" for fp, labels in fps.items())
            lines.append(f"{d}: DIFFERENT question sets -- {parts}")
    return lines


def to_markdown(t: PaperTable) -> str:
    head = ["model", *_columns(t)]
    out = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for row in t.rows:
        label = f"**{row.label}** (baseline)" if row.baseline else row.label
        out.append("| " + " | ".join([label, *map(_text_cell, _row_cells(row, t))]) + " |")
    return "\n".join(out + [""] + [f"{line}  " for line in footnote_lines(t)]) + "\n"


CSV_FIELDS = ["model", "baseline", "column", "accuracy", "ci_low", "ci_high", "n", "delta",
              "mcnemar_p", "significant"]  # fmt: skip


def to_csv(t: PaperTable) -> str:
    """One line per (row, column): the numbers themselves, unrounded."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in t.rows:
        for col, c in zip(_columns(t), _row_cells(row, t), strict=True):
            if c is None:
                continue
            w.writerow({"model": row.label, "baseline": row.baseline, "column": col,
                        "accuracy": c.value, "ci_low": c.ci_low, "ci_high": c.ci_high,
                        "n": "" if c.n is None else c.n,
                        "delta": "" if c.delta is None else c.delta,
                        "mcnemar_p": "" if c.p_value is None else c.p_value,
                        "significant": c.flag or ""})  # fmt: skip
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):  # fmt: skip
        s = s.replace(a, b)
    return s


def _tex_cell(c: Cell | None) -> str:
    if c is None:
        return "--"
    arrow = {UP: r"$^{\uparrow}$", DOWN: r"$^{\downarrow}$"}.get(c.flag, "")
    return f"{pct(c.value)}{arrow} {{\\scriptsize[{pct(c.ci_low)}, {pct(c.ci_high)}]}}"


def to_latex(t: PaperTable) -> str:
    """A booktabs table (\\usepackage{booktabs}); the footnote below the tabular."""
    cols = _columns(t)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        "Model & " + " & ".join(_tex(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for row in t.rows:
        label = _tex(row.label) + (r" \emph{(baseline)}" if row.baseline else "")
        lines.append(label + " & " + " & ".join(map(_tex_cell, _row_cells(row, t))) + r" \\")
    marker = "ARROWS"  # survives _tex; becomes math afterwards
    notes = [_tex(n).replace(marker, r"$\uparrow$/$\downarrow$").replace(" < ", " $<$ ")
             for n in footnote_lines(t, marker)]  # fmt: skip
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip{\footnotesize " + r" \\ ".join(notes) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_tables(t: PaperTable, stem: Path) -> list[Path]:
    """`<stem>.md`, `<stem>.csv`, `<stem>.tex`."""
    out = []
    for suffix, text in ((".md", to_markdown(t)), (".csv", to_csv(t)), (".tex", to_latex(t))):
        path = Path(stem).with_suffix(suffix)
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out
