"""Run every benchmark and print each ratio against its baseline: `python -m bench`.

`python -m bench gpu [--smoke] ...` runs the GPU bench (bench/gpu.py) with its own arguments.

Figures are machine-dependent; record them in bench/README.md with the machine they came from.
"""

from __future__ import annotations

import importlib
import platform
import sys

import torch

BENCHES = [
    "loader_throughput",
    "shard_hashing",
    "padding_waste",
    "eval_throughput",
    "name_scoring",
    "parquet_build",
    "logits_memory",
    "train_throughput",  # needs the peers' venvs (make peers); a missing one is reported
]


SUBCOMMANDS = {"gpu": "bench.gpu"}  # take their own command-line arguments


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:])
        return
    only = sys.argv[1:] or BENCHES
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, cuda={torch.cuda.is_available()}\n"
    )
    summary = {}
    for name in only:
        module = importlib.import_module(f"bench.{name}")
        summary[name] = module.main([])
        print()
    print("summary")
    for name, figures in summary.items():
        for key, value in (figures or {}).items():
            print(
                f"  {name}.{key} = {value:.3g}"
                if isinstance(value, float)
                else f"  {name}.{key} = {value}"
            )


if __name__ == "__main__":
    main()
