"""Run a named grid: `python -m llava_ablate.launch <grid> [overrides...] [--dry-run]`.

python -m llava_ablate.launch llm_x_data --dry-run           # the plan, nothing submitted
python -m llava_ablate.launch llm_x_data hydra.launcher.partition=gpu hydra.launcher.account=me
python -m llava_ablate.launch tiny_2x2                       # CI's grid on a CPU Slurm node
"""

from __future__ import annotations

import argparse
import sys

from llava_ablate.config import ConfigError
from llava_ablate.launch.estimate import EstimateError
from llava_ablate.launch.grid import GridSpec, expand, load_grid
from llava_ablate.launch.plan import add_plan_arguments, format_plan, plan_grid
from llava_ablate.launch.submit import submit_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_ablate.launch", description=__doc__)
    add_plan_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing")
    parser.add_argument("--no-plan", action="store_true", help="submit without printing the plan")
    parser.add_argument(
        "--detach", action="store_true", help="return once submitted (launchers keep running)"
    )
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid, runs_root=args.runs_root)
        if args.gpu:
            grid = GridSpec(**{**grid.__dict__, "gpu": args.gpu})
        if args.dry_run or not args.no_plan:
            print(format_plan(grid, plan_grid(grid, args.overrides)), flush=True)
    except (ConfigError, EstimateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(flush=True)
    return 1 if submit_grid(grid, expand(grid), args.overrides, wait=not args.detach) else 0


if __name__ == "__main__":
    sys.exit(main())
