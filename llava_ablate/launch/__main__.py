"""Run a named grid: `python -m llava_ablate.launch <grid> [overrides...] [--dry-run]`.

python -m llava_ablate.launch llm_x_data --dry-run           # the plan, nothing submitted
python -m llava_ablate.launch llm_x_data hydra.launcher.partition=gpu hydra.launcher.account=me
python -m llava_ablate.launch paper_models --dry-run         # an evaluation grid (kind: evaluate)
python -m llava_ablate.launch tiny_2x2                       # CI's grid on a CPU Slurm node
"""

from __future__ import annotations

import argparse
import sys

from llava_ablate.config import ConfigError
from llava_ablate.launch.estimate import EstimateError
from llava_ablate.launch.plan import add_plan_arguments
from llava_ablate.launch.plan_any import plan_any
from llava_ablate.launch.submit import submit_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_ablate.launch", description=__doc__)
    add_plan_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing")
    parser.add_argument("--no-plan", action="store_true", help="submit without printing the plan")
    parser.add_argument(
        "--detach", action="store_true", help="return once submitted (launchers keep running)"
    )
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    try:
        grid, jobs, evals, text = plan_any(args, show=args.dry_run or not args.no_plan)
        if text:
            print(text, flush=True)
        if args.dry_run:
            return 0
        print(flush=True)
        failed = submit_grid(grid, jobs, args.overrides, wait=not args.detach, evals=evals)
    except (ConfigError, EstimateError) as e:  # a changed grid's refusal included
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
