"""The offline report: one self-contained HTML file (inline CSS and SVG, no network) with the
run x dataset accuracy table, hard-class accuracy, deltas against a baseline (paired CIs and
McNemar p-values for a single seed; seeds x questions CIs for several), the spread over seeds,
plots, and each run's config hash, the keys it differs in beyond the axes and its exact config.
Every number shown is also in the embedded `report-data` JSON, straight from the results files."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from html import escape

from llava_ablate.eval.stats import Estimate
from llava_ablate.report.collect import RunResult
from llava_ablate.report.compare import Delta, Variant, group_variants, hard_gaps, seed_spreads
from llava_ablate.report.exposure import binned_accuracy, exposure_bins
from llava_ablate.report.svg import bar_chart, colour, dodged_points_chart, line_chart

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}tr>th:first-child{max-width:24em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#777;font-size:0.85em}.sig{font-weight:bold}.base{background:#fffbe6}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:0.8em}
.why{color:#555;font-style:italic}figure.chart{margin:1em 0 1.5em}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 18px;padding:0;margin:4px 0 0 64px}
.legend li{display:flex;align-items:baseline;gap:6px;max-width:100%;overflow-wrap:anywhere}
.swatch{display:inline-block;flex:none;width:12px;height:12px;border-radius:2px}
"""


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _label(text: str) -> str:
    """A variant label that may break after its commas, so a wide table fits the page."""
    return escape(text).replace(",", ",<wbr>")


def _acc_cell(a: Estimate | None) -> str:
    if a is None:
        return '<td class="num">-</td>'
    return (
        f'<td class="num" data-value="{a.value!r}">{pct(a.value)}'
        f' <span class="ci">[{pct(a.ci_low)}, {pct(a.ci_high)}]</span></td>'
    )


def _accuracy_table(runs, datasets, base, hard: bool) -> str:
    head = "".join(f"<th>{escape(d)}</th>" for d in datasets)
    rows = []
    for r in runs:
        cls = ' class="base"' if r.variant == base.label else ""
        cells = "".join(
            _acc_cell(
                (r.datasets[d].hard if hard else r.datasets[d].accuracy)
                if d in r.datasets
                else None
            )  # fmt: skip
            for d in datasets
        )
        rows.append(f"<tr{cls}><th>{_label(r.label)}</th>{cells}</tr>")
    return f"<table><tr><th>variant</th>{head}</tr>{''.join(rows)}</table>"


def _delta_table(items: list[Delta], alpha: float = 0.05) -> str:
    rows = []
    for d in items:
        c = d.comparison
        p = c.mcnemar_p
        sig = ' class="num sig"' if p is not None and p < alpha else ' class="num"'
        only = "-" if c.b_only is None else f"{c.b_only} / {c.a_only}"
        p_cell = "-" if p is None else f'<span data-value="{p!r}">{p:.3g}</span>'
        rows.append(
            f"<tr><th>{_label(d.variant)}</th><td>{escape(d.dataset)}</td>"
            f"<td>{escape(d.seeds)}</td>"
            f'<td class="num">{pct(c.acc_a)}</td><td class="num">{pct(c.acc_b)}</td>'
            f'<td{sig} data-value="{c.delta!r}">{100 * c.delta:+.2f}'
            f' <span class="ci">[{100 * c.delta_ci_low:+.2f}, {100 * c.delta_ci_high:+.2f}]</span>'
            f'</td><td class="num">{only}</td>'
            f'<td class="num">{p_cell}</td>'
            f'<td class="num">{c.n}{_unpaired(c)}</td></tr>'
        )
    return (
        "<table><tr><th>variant</th><th>dataset</th><th>seeds</th><th>baseline acc</th>"
        "<th>variant acc</th><th>&Delta; (pp) [95% CI]</th><th>only variant / only baseline "
        f"right</th><th>McNemar p</th><th>n</th></tr>{''.join(rows)}</table>"
    )


def _unpaired(c) -> str:
    k = getattr(c, "unpaired", 0)
    return f' <span class="ci">(paired on shared questions; {k} left out)</span>' if k else ""


def _seed_table(variants: list[Variant]) -> str:
    rows = []
    for s in seed_spreads(variants):
        values = ", ".join(f"{pct(v)} (seed {seed})" for seed, v in zip(s.seeds, s.values,
                                                                       strict=True))  # fmt: skip
        rows.append(
            f"<tr><th>{_label(s.variant)}</th><td>{escape(s.dataset)}</td>"
            f'<td class="num">{len(s.values)}</td><td class="num" data-value="{s.mean!r}">'
            f'{pct(s.mean)}</td><td class="num">{pct(s.sd)}</td>'
            f'<td class="num">{pct(min(s.values))} &ndash; {pct(max(s.values))}</td>'
            f"<td>{values}</td></tr>"
        )
    return (
        "<table><tr><th>variant</th><th>dataset</th><th>seeds</th><th>mean acc</th>"
        "<th>sd over seeds</th><th>min &ndash; max</th><th>per seed</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _differs(r: RunResult) -> str:
    if not r.differs:
        return ""
    items = "".join(f"<li><code>{escape(k)}={escape(str(v))}</code></li>"
                    for k, v in r.differs.items())  # fmt: skip
    return f"<p>differs from the compared runs beyond the axes in:</p><ul>{items}</ul>"


def _why(text: str) -> str:
    """What an empty section shows instead: why it is empty and what would fill it."""
    return f'<p class="why">{escape(text)}</p>'


def _figure(svg: str, names: list[str]) -> str:
    """A chart with its legend in HTML below it: labels wrap instead of being cut."""
    items = "".join(
        f'<li><span class="swatch" style="background:{colour(i)}"></span>'
        f'<span class="series-label">{escape(name)}</span></li>'
        for i, name in enumerate(names)
    )
    legend = f'<figcaption><ul class="legend">{items}</ul></figcaption>'
    return f'<figure class="chart">{svg}{legend}</figure>'


def _no_results(runs: list[RunResult]) -> str:
    return (
        f"No evaluation results: none of the {len(runs)} runs holds any (looked for "
        "<run>/eval/step_<N>/<dataset>/metrics.json and <dir>/<dataset>/metrics.json), so there "
        "are no accuracies, deltas or accuracy plots. Evaluate the runs (evaluate.py, or "
        "eval.every_steps during training) and run the report again."
    )


def _delta_section(title: str, items: list[Delta], empty: str, notes: list[str]) -> list[str]:
    out = [f"<section><h2>{escape(title)}</h2>"]
    out.append(_delta_table(items) if items else _why(empty))
    out += [_why(n) for n in notes]
    return [*out, "</section>"]


def _exposure_figure(dataset: str, runs: list[RunResult], exposure: dict[str, float]) -> str:
    rows = {r.label: r.datasets[dataset].per_class for r in runs if dataset in r.datasets}
    values = [exposure[row["class_name"]] for per in rows.values() for row in per
              if row["class_name"] in exposure]  # fmt: skip
    if not values:
        return _why(f"{dataset}: no class of its per_class.csv is in the exposure table")
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
    return _figure(svg, list(series))


def render_html(
    runs: list[RunResult],
    base: RunResult,
    delta_items: list[Delta],
    *,
    title: str,
    exposure: dict[str, float] | None = None,
    n_boot: int,
    seed: int,
) -> str:
    datasets = sorted({d for r in runs for d in r.datasets})
    variants = group_variants(runs)
    multi_seed = any(len(v.runs) > 1 for v in variants)
    overall = [d for d in delta_items if d.subset == "all questions"]
    hard = [d for d in delta_items if d.subset != "all questions"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>",
        f"<p>{len(runs)} runs, {len(variants)} variants, {len(datasets)} datasets; baseline "
        f"<b>{escape(base.label)}</b>. Accuracies in %, 95% CIs in brackets (from the "
        f"results files). Deltas ({n_boot} resamples, seed {seed}) on the same questions: for "
        f"one seed a side (<i>single seed</i>: it shows question noise only, not how much "
        f"retraining moves a run) a paired bootstrap and the exact McNemar test; for runs that "
        f"differ only in <code>train.seed</code>, the delta of the mean over seeds with a "
        f"bootstrap over seeds and then questions (with fewer than 3 seeds a side it is "
        f"optimistic). Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if not datasets:
        parts.append(_why(_no_results(runs)))
    parts += ["<section><h2>Accuracy per dataset</h2>",
              _accuracy_table(runs, datasets, base, hard=False) if datasets
              else _why("No evaluation results (see above)."), "</section>"]  # fmt: skip
    if any(ds.hard for r in runs for ds in r.datasets.values()):
        parts += ["<section><h2>Hard-class accuracy</h2>",
                  _accuracy_table(runs, datasets, base, True), "</section>"]  # fmt: skip
    if not datasets:
        why_none = "No evaluation results (see above)."
    elif len(variants) < 2:
        why_none = "Only one variant: there is nothing to compare the baseline with."
    else:
        why_none = "No dataset was evaluated by both the baseline and another variant."
    parts += _delta_section(f"Deltas against {base.label}", overall, why_none, [])
    if hard or any(ds.hard for r in runs for ds in r.datasets.values()):
        parts += _delta_section(
            f"Hard-class deltas against {base.label}",
            hard,
            why_none if not overall else "No pair of runs has paired hard-class results.",
            hard_gaps(variants, base),
        )
    if multi_seed:
        parts += ["<section><h2>Spread over training seeds</h2>", _seed_table(variants),
                  "</section>"]  # fmt: skip
    parts.append("<section><h2>Plots</h2>")
    names = [r.label for r in runs]
    if datasets:
        series = {
            r.label: [
                (
                    r.datasets[d].accuracy.value,
                    r.datasets[d].accuracy.ci_low,
                    r.datasets[d].accuracy.ci_high,
                )
                if d in r.datasets
                else None  # fmt: skip
                for d in datasets
            ]
            for r in runs
        }
        parts.append(_figure(bar_chart("Accuracy per dataset (95% CI)", datasets, series), names))
    curves = {r.label: [(row["step"], row["loss"]) for row in r.curves if "loss" in row]
              for r in runs}  # fmt: skip
    if any(curves.values()):
        parts.append(_figure(line_chart("Training loss", curves, "optimizer step", "loss"), names))
    else:
        parts.append(_why("No training curves: no run has loss rows in its metrics.jsonl "
                          "(evaluation-only results directories have none)."))  # fmt: skip
    if exposure:
        parts += [_exposure_figure(d, runs, exposure) for d in datasets]
    parts.append("</section>")
    parts.append("<section><h2>Runs</h2>")
    for r in runs:
        where = escape(str(r.eval_dir or r.path))
        parts.append(
            f"<h3>{escape(r.label)}</h3><p>run <code>{escape(str(r.path))}</code>, config hash "
            f"<code>{escape(r.config_hash or '-')}</code>, results <code>{where}</code></p>"
            f"{_differs(r)}<details><summary>exact config</summary>"
            f"<pre>{escape(r.config_text or '(no config.yaml)')}</pre></details>"
        )
    parts.append("</section>")
    data = {
        "baseline": base.label,
        "variants": {
            r.label: {
                "path": str(r.path),
                "variant": r.variant,
                "seed": r.seed,
                "config_hash": r.config_hash,
                "differs": r.differs,
                "datasets": {
                    d: {"accuracy": asdict(x.accuracy), "hard": x.hard and asdict(x.hard)}
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
            }  # fmt: skip
            for d in delta_items
        ],
        "seed_spreads": [
            {
                "variant": s.variant,
                "dataset": s.dataset,
                "seeds": s.seeds,
                "values": s.values,
                "mean": s.mean,
                "sd": s.sd,
            }  # fmt: skip
            for s in seed_spreads(variants)
        ],
    }
    parts.append(
        '<script type="application/json" id="report-data">'
        + json.dumps(data).replace("</", "<\\/")
        + "</script></body></html>"
    )
    return "\n".join(parts)
