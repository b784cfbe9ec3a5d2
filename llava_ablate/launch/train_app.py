"""The training application: compose the config with Hydra, then build, train and export.

One function behind every door: `train.py` at the repository root (for `torchrun`),
`llava-ablate train ...` (the installed command), `python -m llava_ablate.launch.train_app` (what
the grids and the demo start, from any directory) and Hydra's launchers (`-m`).

torchrun --nproc_per_node=8 -m llava_ablate.launch.train_app llm=qwen2 data=si32m
llava-ablate train +experiment=tiny_align          # CPU: launches itself on 1 rank
llava-ablate train llm=qwen2 data=si32m --cfg job  # print the composed config
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from llava_ablate.base.config import run_hydra_main
from llava_ablate.config import CONF_SOURCE, register_configs, validate
from llava_ablate.launch.local_jobs import JobFailed
from llava_ablate.launch.slurm import PREEMPT_SIGNAL

# Slurm's early-warning signal must be the one the training loop checkpoints on; set before
# Hydra's submitit launcher imports submitit, which reads it once. Jobs inherit it.
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL

register_configs()


@hydra.main(config_path=CONF_SOURCE, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate(cfg)  # unknown keys, choices, ranges: before any process group, file or model
    from llava_ablate.launch.task import train_task  # heavy imports after composition

    train_task(cfg)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run the application on `argv` (Hydra's own command line: overrides, `-m`, `--cfg job`);
    None reads `sys.argv`. A config error's own message is the last thing printed."""
    if argv is not None:  # @hydra.main parses sys.argv itself
        sys.argv = [prog or sys.argv[0], *argv]
    try:
        run_hydra_main(main)
    except JobFailed as failed:  # a local multirun's job: its own process printed the error
        print(f"multirun: {failed}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
