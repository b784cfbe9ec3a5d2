"""Evaluate a model on the classification MCQs: compose the config, score, write results.

python evaluate.py model.path=runs/<variant>/export eval/datasets=[imagenet,cub200]
python evaluate.py model.type=clip model.path=openai/clip-vit-large-patch14-336
torchrun --nproc_per_node=8 evaluate.py model.path=llava-hf/llava-1.5-7b-hf eval=hard
python evaluate.py --cfg job   # print the composed config
python evaluate.py ... shard.index=0 shard.count=4   # a quarter of the questions; then shard.count=1 merges
python -m llava_ablate.launch paper_models   # many models x datasets: an evaluation grid
"""

import hydra
from omegaconf import DictConfig

from llava_ablate.base.config import run_hydra_main
from llava_ablate.eval_config import register_eval_configs, validate_evaluate

register_eval_configs()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_evaluate(cfg)  # unknown keys, choices, ranges: before any model loads
    from llava_ablate.launch.task import eval_task  # heavy imports after composition

    eval_task(cfg)  # Slurm tasks (evaluation grids) join as ranks, as under torchrun


if __name__ == "__main__":
    run_hydra_main(main)  # a config error's own message is the last thing printed
