"""`llava-ablate plan <grid>` and the launcher's plan, for either kind of grid (launch/kinds.py):
a training grid (with its evaluation stages) or an evaluation grid (`kind: evaluate`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import NamedTuple

from llava_ablate.config import ConfigError
from llava_ablate.launch.estimate import EstimateError
from llava_ablate.launch.evalgrid import EvalGridSpec, EvalJob
from llava_ablate.launch.grid import GridSpec, Job, read_grid
from llava_ablate.launch.kinds import kind_for
from llava_ablate.launch.plan import add_plan_arguments


class PlannedGrid(NamedTuple):
    grid: GridSpec | EvalGridSpec
    jobs: list[Job]  # training jobs (none in an evaluation grid)
    evals: list[EvalJob]
    text: str  # the plan; empty when not shown


def plan_any(args: argparse.Namespace, show: bool = True) -> PlannedGrid:
    """The grid read once, expanded and -- `show` -- planned. `show=False` skips the estimates
    (a training grid's existing runs are still checked by submit_grid)."""
    raw, path = read_grid(args.grid, args.overrides)
    kind = kind_for(raw)
    grid = kind.load(raw, path, args.runs_root)
    if args.gpu:
        grid = replace(grid, gpu=args.gpu)
    if not show:
        return PlannedGrid(grid, *kind.expand(grid), "")
    return PlannedGrid(grid, *kind.plan(grid, args.overrides))


def plan_command(args: argparse.Namespace) -> None:
    try:
        text = plan_any(args).text
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
