"""`llava-ablate plan <grid>` and the launcher's plan, for either kind of grid: a training
grid (with its evaluation stages) or an evaluation grid (`kind: evaluate`)."""

from __future__ import annotations

import argparse

from llava_ablate.config import ConfigError
from llava_ablate.launch.estimate import EstimateError
from llava_ablate.launch.evalgrid import (
    EvalGridSpec,
    EvalJob,
    evaluation_overrides,
    expand_eval_grid,
    expand_eval_stages,
    is_eval_grid,
    load_eval_grid,
)
from llava_ablate.launch.evalplan import ModelScale, format_eval_plan, plan_eval_jobs
from llava_ablate.launch.grid import GridSpec, Job, expand, load_grid
from llava_ablate.launch.plan import add_plan_arguments, format_plan, plan_grid


def plan_any(
    args: argparse.Namespace, show: bool = True
) -> tuple[GridSpec | EvalGridSpec, list[Job], list[EvalJob], str]:
    """(grid, training jobs, evaluation jobs, the plan's text). `show=False` skips the
    estimates (a training grid's existing runs are still checked by submit_grid)."""
    if is_eval_grid(args.grid, args.overrides):
        egrid = load_eval_grid(args.grid, runs_root=args.runs_root, overrides=args.overrides)
        if args.gpu:
            egrid = EvalGridSpec(**{**egrid.__dict__, "gpu": args.gpu})
        evals = expand_eval_grid(egrid)
        if not show:
            return egrid, [], evals, ""
        rows = plan_eval_jobs(evals, list(egrid.launcher), args.overrides, egrid.gpu, egrid.mfu)
        title = f"grid {egrid.name}" + (f" -- {egrid.description}" if egrid.description else "")
        text = format_eval_plan(title, rows, egrid.gpu, egrid.mfu)
        root = evals[0].results_root if evals else egrid.name
        base = f" --baseline {egrid.baseline}" if egrid.baseline else ""
        text += "\ntables, once it has run: " + "; ".join(
            f"llava-ablate report {root / d}{base} --out {egrid.name}_{d}.html"
            for d in egrid.stage.distractors
        )
        return egrid, [], evals, text
    grid = load_grid(args.grid, runs_root=args.runs_root, overrides=args.overrides)
    if args.gpu:
        grid = GridSpec(**{**grid.__dict__, "gpu": args.gpu})
    if not show:
        jobs = expand(grid)
        return grid, jobs, expand_eval_stages(grid, jobs), ""
    train_rows = plan_grid(grid, args.overrides)
    jobs = [r.job for r in train_rows]  # their identities are checked: not composed again
    evals = expand_eval_stages(grid, jobs)
    text = format_plan(grid, train_rows)
    if evals:
        scale = {id(r.job): ModelScale(float(r.size.params), r.size.image_tokens, "its plan")
                 for r in train_rows}  # fmt: skip
        # The stage's own overrides, the grid's launcher, then the command line's.
        eval_extra = evaluation_overrides(args.overrides)
        rows = plan_eval_jobs(evals, list(grid.launcher), eval_extra, grid.gpu, grid.mfu, scale)
        stages = ", ".join(s.name for s in grid.eval_stages)
        text += "\n\n" + format_eval_plan(f"evaluation stage {stages}", rows, grid.gpu, grid.mfu)
    return grid, jobs, evals, text


def plan_command(args: argparse.Namespace) -> None:
    try:
        _, _, _, text = plan_any(args)
    except (ConfigError, EstimateError) as e:
        raise SystemExit(f"plan failed: {e}") from e
    print(text)


def add_plan_command(subparsers) -> None:
    """`llava-ablate plan`: registered by llava_ablate/cli.py."""
    p = subparsers.add_parser(
        "plan", help="print a grid's jobs, resources, memory, questions, tokens, GPU-hours"
    )
    add_plan_arguments(p)
    p.set_defaults(func=plan_command)
