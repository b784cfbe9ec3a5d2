"""Protocol cards in the report: for every run and dataset whose metrics.json holds a
`protocol` block (evaluate.py eval=protocol, eval/card.py), a table of each axis's accuracy
with its interval, and per dataset one chart per axis with every model side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_ablate.eval.results import METRICS, ResultsError, read_results
from llava_ablate.report.svg import colour, dodged_points_chart


@dataclass
class CardView:
    label: str  # the run's row label (or its model name)
    dataset: str
    card: dict


@dataclass
class CardRow:
    axis: str
    setting: str
    accuracy: dict | None  # value, ci_low, ci_high, n
    detail: str  # the paired difference, the spread, what a row means


def cards_of(runs) -> list[CardView]:
    """Every (run, dataset) with a card, in the runs' order."""
    return [CardView(r.label or r.model_name or r.path.name, d, ds.protocol)
            for r in runs for d, ds in sorted(r.datasets.items()) if ds.protocol]  # fmt: skip


def read_cards(path: Path) -> list[CardView]:
    """The cards of an evaluate.py results directory (report --cards), whatever its scorers."""
    from llava_ablate.report.collect import find_eval_dir

    root = find_eval_dir(Path(path)) if Path(path).is_dir() else None
    if root is None:
        raise ResultsError(f"{path} holds no evaluation results (<dataset>/metrics.json)")
    views = []
    for d in sorted(p for p in root.iterdir() if (p / METRICS).exists()):
        m = read_results(d)
        if m.get("protocol"):
            views.append(CardView(m.get("model") or Path(path).name, m["dataset"], m["protocol"]))
    return views


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _paired(row: dict) -> str:
    p = row.get("paired")
    if not p:
        return "reference"
    return (f"{100 * p['delta']:+.1f} pp vs {row['vs']} [{100 * p['ci_low']:+.1f}, "
            f"{100 * p['ci_high']:+.1f}], McNemar p={p['mcnemar_p']:.3g}")  # fmt: skip


def _spread(s: dict, what: str) -> str:
    return (f"{what}: min {_pct(s['min'])}, max {_pct(s['max'])}, sd {_pct(s['sd'])} pp; range "
            f"{_pct(s['range'])} pp (noise alone: 95% under {_pct(s['null_range_95'])} pp, "
            f"p={s['p_value']:.3g})")  # fmt: skip


def card_rows(card: dict) -> list[CardRow]:
    rows = []
    for r in card.get("options", []):
        setting = f"all {r['options']} classes" if r["k"] == "all" else f"k = {r['k']}"
        rows.append(CardRow("options", setting, r["accuracy"],
                            f"chance {_pct(r['chance'])}; {r['scorer']}; {_paired(r)}"))  # fmt: skip
    for r in card.get("difficulty", []):
        by = f" ({r['encoder']})" if r.get("encoder") else ""
        rows.append(CardRow("distractors", r["distractors"] + by, r["accuracy"], _paired(r)))
    if "wording" in card:
        w = card["wording"]
        for i, p in enumerate(w["phrasings"]):
            rows.append(CardRow("wording", f"#{i}: {p['question']} / {p['instruction']}",
                                p["accuracy"], ""))  # fmt: skip
        rows.append(CardRow("wording", "spread", None, _spread(w["spread"], "over phrasings")))
    if "order" in card:
        o = card["order"]
        rows.append(CardRow("order", f"all {o['rotations']} rotations right",
                            o["all_correct_accuracy"],
                            f"consistency {_pct(o['consistency'])}%; "
                            + _spread(o["spread"], "accuracy over rotations")))  # fmt: skip
    if "open" in card:
        op = card["open"]
        rows.append(CardRow("open answer", "names the true class", op["accuracy"],
                            f"{op['matched']}; unmatched {_pct(op['unmatched_rate'])}%"))  # fmt: skip
        if "nearest" in op:
            rows.append(CardRow("open answer", "nearest class (labelled)",
                                op["nearest"]["accuracy"], op["nearest"]["label"]))  # fmt: skip
    return rows


def _point(acc: dict | None, what: str):
    if acc is None:
        return None
    return (acc["value"], acc["ci_low"], acc["ci_high"],
            f"{what}: {_pct(acc['value'])}% [{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}] "
            f"on {acc['n']} questions")  # fmt: skip


def _axis_chart(title: str, views: list[CardView], settings, x_label: str) -> dict | None:
    """`settings`: (category label, sub-label, card -> accuracy dict or None) per category."""
    series = {v.label: [_point(get(v.card), label) for label, _, get in settings] for v in views}
    if not any(p for s in series.values() for p in s):
        return None
    svg = dodged_points_chart(title, [(label, sub) for label, sub, _ in settings], series,
                              x_label, "accuracy (95% CI)")  # fmt: skip
    names = list(series)
    return {"svg": svg, "names": names, "colours": [colour(i) for i in range(len(names))],
            "note": ""}  # fmt: skip


def _find(axis: str, key: str, value: str):
    """card -> the accuracy of the `axis` row whose `key` is `value` (None: no such row)."""
    return lambda card: next((r["accuracy"] for r in card.get(axis, []) if r[key] == value), None)


def _nth(axis: str, key: str, i: int):
    """card -> item i of card[axis][key] (None: fewer items)."""

    def get(card):
        items = card.get(axis, {}).get(key) or []
        return items[i] if i < len(items) else None

    return get


def card_charts(views: list[CardView]) -> list[dict]:
    """Per dataset: accuracy vs k, vs distractors, per wording, per rotation, open vs MCQ."""
    charts = []
    for dataset in dict.fromkeys(v.dataset for v in views):
        vs = [v for v in views if v.dataset == dataset]
        ks = list(dict.fromkeys(r["k"] for v in vs for r in v.card.get("options", [])))
        diffs = list(dict.fromkeys(r["distractors"] for v in vs
                                   for r in v.card.get("difficulty", [])))  # fmt: skip
        n_words = max((len(v.card.get("wording", {}).get("phrasings", [])) for v in vs), default=0)
        n_rot = max((len(v.card.get("order", {}).get("per_rotation", [])) for v in vs), default=0)

        def phrasing(i):
            return lambda card: (_nth("wording", "phrasings", i)(card) or {}).get("accuracy")

        specs = [
            ("options per question", [(f"k={k}" if k != "all" else "all", "", _find("options", "k", k))
                                      for k in ks], "options"),
            ("distractor difficulty", [(d, "", _find("difficulty", "distractors", d))
                                       for d in diffs], "distractors"),
            ("wording", [(f"#{i}", "", phrasing(i)) for i in range(n_words)], "phrasing"),
            ("option order", [(f"shift {i}", "", _nth("order", "per_rotation", i))
                              for i in range(n_rot)], "rotation"),
            ("open answer vs multiple choice",
             [("MCQ", "k as asked", lambda c: (c.get("wording", {}).get("phrasings") or
                                               [{}])[0].get("accuracy")),
              ("open", "named", lambda c: c.get("open", {}).get("accuracy")),
              ("open", "nearest", lambda c: c.get("open", {}).get("nearest", {}).get("accuracy"))],
             "answer"),
        ]  # fmt: skip
        for what, settings, x_label in specs:
            if settings:
                chart = _axis_chart(f"{dataset}: accuracy by {what}", vs, settings, x_label)
                if chart:
                    charts.append(chart)
    return charts
