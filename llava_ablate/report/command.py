"""`llava-ablate report <grid dir or run dirs>`: the offline HTML report, and the W&B Report
when asked (`--wandb`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llava_ablate.report.cards import read_cards
from llava_ablate.report.collect import (
    ResultsError,
    discover_runs,
    grid_order,
    label_runs,
    read_run,
)
from llava_ablate.report.compare import deltas, group_variants, hard_deltas, pick_baseline
from llava_ablate.report.environment import (
    environment_lines,
    mark_environment,
    strict_environment_error,
)
from llava_ablate.report.exposure import read_exposure
from llava_ablate.report.html import render_html
from llava_ablate.report.table_files import write_tables
from llava_ablate.report.tables import build_table


def build(args: argparse.Namespace):
    paths = discover_runs([Path(p) for p in args.paths])
    runs = [read_run(p, args.scorer) for p in paths]
    label_runs(runs)  # runs that differ only in train.seed form one variant
    mark_environment(runs)  # the software/hardware keys the rows differ in
    if getattr(args, "strict_env", False) and (why := strict_environment_error(runs)):
        raise ResultsError(why)
    runs = grid_order(runs)  # zero-shot baselines, then the grid's order: the rows' order
    variants = group_variants(runs)
    base = pick_baseline(variants, args.baseline)
    items = deltas(variants, base, args.bootstrap, args.seed)
    items += hard_deltas(variants, base, args.bootstrap, args.seed)  # Delta.subset tells apart
    return runs, base, items


def report_command(args: argparse.Namespace) -> None:
    try:
        runs, base, items = build(args)
        exposure = read_exposure(Path(args.exposure)) if args.exposure else None
    except (ResultsError, ValueError, OSError) as e:
        raise SystemExit(f"report failed: {e}") from e
    title = args.title or f"llava-ablate: {', '.join(map(str, args.paths))}"
    # One table for the page and the files: the same rows, aggregation and intervals.
    table = build_table(runs, base, items, scorer=args.scorer, n_boot=args.bootstrap,
                        seed=args.seed)  # fmt: skip
    try:  # evaluate.py results shown only by their protocol cards, not as table rows
        cards = [c for p in args.cards for c in read_cards(Path(p))]
    except (ResultsError, ValueError, OSError) as e:
        raise SystemExit(f"report failed: {e}") from e
    html = render_html(runs, base, items, title=title, exposure=exposure,
                       n_boot=args.bootstrap, seed=args.seed, table=table,
                       cards=cards)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    tables = write_tables(table, out.with_suffix(""))  # the paper-style table, beside the HTML
    print(f"table (models x datasets): {', '.join(map(str, tables))}")
    for line in environment_lines(runs):  # also in the tables' notes and on the page
        print(line)
    n_variants = len({r.variant for r in runs})
    hard = sum(d.subset != "all questions" for d in items)
    print(f"{len(runs)} runs, {n_variants} variants, {len(items) - hard} comparison(s) (+{hard} on "
          f"hard classes) against {base.label}: {out}")  # fmt: skip
    if args.wandb:
        from llava_ablate.report.wandb_report import build_report, save_report

        if not args.wandb_entity:
            raise SystemExit("--wandb needs --wandb-entity (your W&B user or team)")
        report = build_report(runs, base, items, project=args.wandb_project,
                              entity=args.wandb_entity, group=args.wandb_group, title=title)  # fmt: skip
        print(f"W&B report: {save_report(report)}")


def add_report_command(subparsers) -> None:
    """Registered by llava_ablate/cli.py."""
    p = subparsers.add_parser("report", help="compare runs: offline HTML (+ W&B Report)")
    p.add_argument("paths", nargs="+", help="a grid directory (runs below it) or run directories")
    p.add_argument("--out", default="report.html", help="the HTML file to write")
    p.add_argument("--baseline", default=None,
                   help="a row's label (`x` for `×`) or one of its run dirs (default: the "
                        "zero-shot row if any, else the first row)")  # fmt: skip
    p.add_argument("--scorer", default="likelihood", help="which scorer's results to compare")
    p.add_argument("--exposure", default=None, help="class_name,exposure CSV (data exposure)")
    p.add_argument("--cards", nargs="+", default=[],
                   help="evaluate.py results directories (eval=protocol) whose protocol cards "
                        "the page shows besides the table's runs' own")  # fmt: skip
    p.add_argument("--strict-env", action="store_true",
                   help="fail when the rows ran on different software (package versions, "
                        "commit) or a row has no recorded environment")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=2000, help="paired-bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default=None)
    p.add_argument("--wandb", action="store_true", help="also save a W&B Report (needs login)")
    p.add_argument("--wandb-project", default="llava-ablate")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-group", default=None, help="the grid's W&B group (its name)")
    p.set_defaults(func=report_command)
