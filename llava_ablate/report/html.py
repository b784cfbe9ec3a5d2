"""The offline report: one self-contained HTML file (inline CSS and SVG, no network). Python
computes (the paper table of tables.py, compare.py's paired tests, the charts), Jinja2 templates
lay out, one per section (report/templates/, shipped as package data): the accuracy table with
the zero-shot baselines' rows (seeds aggregated as in report.md/.csv/.tex: it is the same
table), hard-class accuracy, deltas against the baseline, the spread over seeds, plots, and each
run's config hash, the keys it differs in beyond the axes and its exact config. Every number is
also in the embedded `report-data` JSON, straight from the results files.

The charts stay hand-written SVG (svg.py): the page must open offline as one file, and the
charting libraries that could draw them either embed a multi-megabyte JavaScript bundle per page
(Plotly, Vega-Lite) or are not installed here (matplotlib); ours are ~160 lines, carry hover
titles, and the browser tests measure them."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from functools import cache

import jinja2
from markupsafe import Markup, escape

from llava_ablate.report.cards import CardView, card_charts, card_rows, cards_of
from llava_ablate.report.collect import RunResult
from llava_ablate.report.compare import Delta, Variant, group_variants, hard_gaps, seed_spreads
from llava_ablate.report.exposure import binned_accuracy, exposure_bins
from llava_ablate.report.svg import bar_chart, colour, dodged_points_chart, line_chart
from llava_ablate.report.tables import (
    ARROWS,
    PaperTable,
    TableRow,
    build_table,
    columns,
    footnote_lines,
    interval_note,
    row_cells,
    seeds_text,
)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llava_ablate.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not the page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=pct,
        pp=lambda x: f"{100 * x:+.2f}",
        repr=repr,
        value=lambda c: f"{pct(c.value)}" + (f" ± {pct(c.sd)}" if c.sd is not None else ""),
        interval=lambda c: (
            "[no interval]" if c.ci_low is None else f"[{pct(c.ci_low)}, {pct(c.ci_high)}]"
        ),
        arrow=lambda flag: ARROWS.get(flag, ""),
        seeds=seeds_text,
        cells=row_cells,
        # A label may break after its separators, so a wide table fits the page.
        wbr=lambda s: Markup(str(escape(s)).replace(",", ",<wbr>").replace(" × ", " ×<wbr> ")),
    )
    return env


def _no_results(runs: list[RunResult]) -> str:
    return (
        f"No evaluation results: none of the {len(runs)} runs holds any (looked for "
        "<run>/eval/step_<N>/<dataset>/metrics.json and <dir>/<dataset>/metrics.json), so there "
        "are no accuracies, deltas or accuracy plots. Evaluate the runs (evaluate.py, or "
        "eval.every_steps during training) and run the report again."
    )


def _chart(svg: str, names: list[str], note: str = "") -> dict:
    return {"svg": svg, "names": names, "colours": [colour(i) for i in range(len(names))],
            "note": note}  # fmt: skip


def _bars(t: PaperTable) -> dict:
    """Every table row (zero-shot baselines included) per dataset, with its interval."""
    series = {}
    for row in t.rows:
        series[row.label] = [None if (c := row.cells[d]) is None
                             else (c.value, _or(c.ci_low, c.value), _or(c.ci_high, c.value))
                             for d in t.datasets]  # fmt: skip
    svg = bar_chart("Accuracy per dataset (95% CI)", t.datasets, series)
    return _chart(svg, list(series), "Intervals as in the table (Wilson for one run; the "
                  "bootstrap over seeds and questions for a mean over seeds).")  # fmt: skip


def _or(x, default):
    return default if x is None else x


def _exposure(dataset: str, variants: list[Variant], exposure: dict[str, float]) -> dict:
    """Accuracy per exposure group, one series per variant (its seeds' questions pooled)."""
    rows = {v.label: [row for r in v.runs if dataset in r.datasets
                      for row in r.datasets[dataset].per_class]
            for v in variants if any(dataset in r.datasets for r in v.runs)}  # fmt: skip
    values = [exposure[row["class_name"]] for per in rows.values() for row in per
              if row["class_name"] in exposure]  # fmt: skip
    if not values:
        return _chart("", [], f"{dataset}: no class of its per_class.csv is in the exposure table")
    bins = exposure_bins(values)
    series = {}
    for label, per in rows.items():
        series[label] = [
            None if b is None else (b.value, b.ci_low, b.ci_high,
                                    f"{pct(b.value)}% [{pct(b.ci_low)}, {pct(b.ci_high)}] over "
                                    f"{b.questions} questions of {', '.join(b.classes)}")
            for b in binned_accuracy(per, exposure, bins)
        ]  # fmt: skip
    counts = [len({row["class_name"] for per in rows.values() for row in per
                   if row["class_name"] in exposure and b.holds(exposure[row["class_name"]])})
              for b in bins]  # fmt: skip
    svg = dodged_points_chart(
        f"{dataset}: accuracy by concept exposure (95% CI)",
        [(b.label, f"{c} class" + ("es" * (c != 1))) for b, c in zip(bins, counts, strict=True)],
        series,
        "training samples mentioning the class",
        "accuracy over the group's questions",
    )
    several = any(len(v.runs) > 1 for v in variants)
    note = "A group's accuracy pools its classes' questions (Wilson interval)" + (
        "; a variant with several seeds pools its seeds' answers." if several else "."
    )
    return _chart(svg, list(series), note)


def _loss(runs: list[RunResult]) -> dict:
    curves = {r.label: [(row["step"], row["loss"]) for row in r.curves if "loss" in row]
              for r in runs if not r.zero_shot}  # fmt: skip
    if not any(curves.values()):
        return _chart("", [], "No training curves: no run has loss rows in its metrics.jsonl "
                      "(evaluation-only results directories have none).")  # fmt: skip
    return _chart(line_chart("Training loss", curves, "optimizer step", "loss"), list(curves))


def _data(runs: list[RunResult], t: PaperTable, items: list[Delta], variants) -> dict:
    def row(r: TableRow) -> dict:
        return {"label": r.label, "baseline": r.baseline, "zero_shot": r.zero_shot,
                "seeds": r.seeds, "differs": r.differs,
                "cells": {d: c and asdict(c) for d, c in r.cells.items()},
                "hard_cells": {d: c and asdict(c) for d, c in r.hard_cells.items()},
                "average": r.average and asdict(r.average), "hard": r.hard and asdict(r.hard)}  # fmt: skip

    return {
        "baseline": t.baseline,
        "table": {
            "datasets": t.datasets,
            "rows": [row(r) for r in t.rows],
            "n_boot": t.n_boot,
            "seed": t.seed,
        },
        "variants": {
            r.label: {
                "path": str(r.path),
                "variant": r.variant,
                "seed": r.seed,
                "zero_shot": r.zero_shot,
                "config_hash": r.config_hash,
                "differs": r.differs,
                "environment": r.environment,
                "env_differs": r.env_differs,
                "datasets": {
                    d: {
                        "accuracy": asdict(x.accuracy),
                        "hard": x.hard and asdict(x.hard),
                        "scorer": x.scorer,
                    }
                    for d, x in r.datasets.items()
                },
            }
            for r in runs
        },
        "deltas": [
            {
                "variant": d.variant,
                "dataset": d.dataset,
                "subset": d.subset,
                "seeds": d.seeds,
                **d.comparison.as_dict(),
            }
            for d in items
        ],
        "seed_spreads": [
            {
                "variant": s.variant,
                "dataset": s.dataset,
                "seeds": s.seeds,
                "values": s.values,
                "mean": s.mean,
                "sd": s.sd,
            }
            for s in seed_spreads(variants)
        ],
    }


def render_html(
    runs: list[RunResult],
    base: Variant,
    delta_items: list[Delta],
    *,
    title: str,
    exposure: dict[str, float] | None = None,
    n_boot: int,
    seed: int,
    table: PaperTable | None = None,
    cards: list[CardView] | None = None,
) -> str:
    """The page for `runs` (in the rows' order, collect.grid_order) against `base`; `table`
    defaults to tables.build_table of the same inputs (the scorer read from the results).
    `cards`: protocol cards besides those of `runs` (report --cards)."""
    if table is None:
        scorer = next((ds.scorer for r in runs if not r.zero_shot for ds in r.datasets.values()),
                      "likelihood")  # fmt: skip
        table = build_table(runs, base, delta_items, scorer=scorer, n_boot=n_boot, seed=seed)
    variants = group_variants(runs)
    overall = [d for d in delta_items if d.subset == "all questions"]
    hard = [d for d in delta_items if d.subset != "all questions"]
    has_hard = any(ds.hard for r in runs for ds in r.datasets.values())
    if not table.datasets:
        why_none = "No evaluation results (see above)."
    elif len(variants) < 2:
        why_none = "Only one variant: there is nothing to compare the baseline with."
    else:
        why_none = "No dataset was evaluated by both the baseline and another variant."
    charts = [_bars(table)] if table.datasets else []
    charts.append(_loss(runs))
    if exposure:
        charts += [_exposure(d, variants, exposure) for d in table.datasets]
    cards = cards_of(runs) + list(cards or [])
    env = environment()
    context = {
        "cards": [{"view": c, "rows": card_rows(c.card)} for c in cards],
        "card_charts": card_charts(cards) if cards else [],
        "m": env.get_template("macros.html.j2").module,
        "title": title,
        "n_runs": len(runs),
        "n_variants": len(variants),
        "n_boot": n_boot,
        "seed": seed,
        "table": table,
        "columns": columns(table),
        "footnotes": footnote_lines(table),
        "interval_note": interval_note(table),
        "generated": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        "no_results": _no_results(runs),
        "has_hard": has_hard and bool(table.datasets),
        "overall": {
            "title": f"Deltas against {base.label}",
            "entries": overall,
            "empty": why_none,
            "notes": [],
        },
        "hard_deltas": (hard or has_hard)
        and {
            "title": f"Hard-class deltas against {base.label}",
            "entries": hard,
            "empty": why_none if not overall else "No pair of runs has paired hard-class results.",
            "notes": hard_gaps(variants, base),
        },
        "alpha": table.alpha,
        "spreads": seed_spreads(variants),
        "charts": charts,
        "runs": runs,
        "data_json": json.dumps(
            _data(runs, table, delta_items, variants)
            | {
                "protocol_cards": [
                    {"label": c.label, "dataset": c.dataset, "card": c.card} for c in cards
                ]
            }  # fmt: skip
        ).replace("</", "<\\/"),
    }
    return env.get_template("page.html.j2").render(context)
