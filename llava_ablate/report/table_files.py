"""The paper table (tables.py) as files beside the HTML: Markdown, CSV (one line per cell, the
numbers unrounded) and LaTeX (booktabs), each with the table's footnote."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from llava_ablate.report.tables import (
    ARROWS,
    DOWN,
    UP,
    Cell,
    PaperTable,
    columns,
    footnote_lines,
    interval_text,
    row_cells,
    seeds_text,
    value_text,
)


def _text_cell(c: Cell | None) -> str:
    if c is None:
        return "–"
    return f"{value_text(c)} {interval_text(c)}" + ARROWS.get(c.flag, "")


def to_markdown(t: PaperTable) -> str:
    head = ["model", "seeds", *columns(t)]
    out = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in t.rows:
        label = f"**{row.label}** (baseline)" if row.baseline else row.label
        cells = [label, seeds_text(row), *map(_text_cell, row_cells(row, t))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out + [""] + [f"{line}  " for line in footnote_lines(t)]) + "\n"


CSV_FIELDS = ["model", "baseline", "zero_shot", "seeds", "column", "accuracy", "sd", "ci_low",
              "ci_high", "interval", "n", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p",
              "significant", "beyond_axes", "image_aspect"]  # fmt: skip


def _blank(x) -> Any:
    return "" if x is None else x


def to_csv(t: PaperTable) -> str:
    """One line per (row, column), the numbers unrounded; per-dataset hard-class cells as
    `<dataset> (hard)`; `interval` names the method (wilson | bootstrap)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in t.rows:
        named = list(zip(columns(t), row_cells(row, t), strict=True))
        named += [(f"{d} (hard)", row.hard_cells[d]) for d in t.datasets]
        beyond = "; ".join(f"{k}={v}" for k, v in row.differs.items())
        for col, c in named:
            if c is None:
                continue
            w.writerow({"model": row.label, "baseline": row.baseline,
                        "zero_shot": row.zero_shot, "seeds": seeds_text(row), "column": col,
                        "accuracy": c.value, "sd": _blank(c.sd), "ci_low": _blank(c.ci_low),
                        "ci_high": _blank(c.ci_high), "interval": c.method, "n": _blank(c.n),
                        "delta": _blank(c.delta), "delta_ci_low": _blank(c.delta_ci_low),
                        "delta_ci_high": _blank(c.delta_ci_high),
                        "mcnemar_p": _blank(c.p_value), "significant": c.flag or "",
                        "beyond_axes": beyond, "image_aspect": row.image_aspect})  # fmt: skip
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}"),
                 ("×", r"$\times$"), ("±", r"$\pm$")):  # fmt: skip
        s = s.replace(a, b)
    return s


def _tex_cell(c: Cell | None) -> str:
    if c is None:
        return "--"
    arrow = {UP: r"$^{\uparrow}$", DOWN: r"$^{\downarrow}$"}.get(c.flag, "")
    return f"{_tex(value_text(c))}{arrow} {{\\scriptsize{_tex(interval_text(c))}}}"


def to_latex(t: PaperTable) -> str:
    """A booktabs table (\\usepackage{booktabs}); the footnote below the tabular."""
    cols = columns(t)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{lr" + "r" * len(cols) + "}",
        r"\toprule",
        "Model & Seeds & " + " & ".join(_tex(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(t.rows):
        label = _tex(row.label) + (r" \emph{(baseline)}" if row.baseline else "")
        cells = [label, seeds_text(row), *map(_tex_cell, row_cells(row, t))]
        lines.append(" & ".join(cells) + r" \\")
        if row.zero_shot and i + 1 < len(t.rows) and not t.rows[i + 1].zero_shot:
            lines.append(r"\midrule")  # the zero-shot baselines above the trained variants
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
