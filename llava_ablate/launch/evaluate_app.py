"""The evaluation application: compose the config with Hydra, score, write results.

Behind `evaluate.py` at the repository root (for `torchrun`), `llava-ablate evaluate ...` (the
installed command) and `python -m llava_ablate.launch.evaluate_app` (any directory).

llava-ablate evaluate model.path=runs/<variant>/export eval/datasets=[imagenet,cub200]
torchrun --nproc_per_node=8 -m llava_ablate.launch.evaluate_app model.path=llava-hf/llava-1.5-7b-hf
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from llava_ablate.base.config import run_hydra_main
from llava_ablate.config import CONF_SOURCE
from llava_ablate.eval_config import register_eval_configs, validate_evaluate

register_eval_configs()


@hydra.main(config_path=CONF_SOURCE, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_evaluate(cfg)  # unknown keys, choices, ranges: before any model loads
    from llava_ablate.launch.task import eval_task  # heavy imports after composition

    eval_task(cfg)  # Slurm tasks (evaluation grids) join as ranks, as under torchrun


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """As train_app.run, for evaluation."""
    if argv is not None:  # @hydra.main parses sys.argv itself
        sys.argv = [prog or sys.argv[0], *argv]
    run_hydra_main(main)


if __name__ == "__main__":
    run()
