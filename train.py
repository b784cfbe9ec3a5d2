"""Train one LLaVA variant: compose the config with Hydra, then build, train and export.

torchrun --nproc_per_node=8 train.py llm=qwen2 data=si32m
python train.py +experiment=tiny_align          # CPU: launches itself on 1 rank
python train.py llm=qwen2 data=si32m --cfg job  # print the composed config
python train.py -m llm=vicuna7b,qwen2 data=llava665k,si32m hydra/launcher=slurm  # a Slurm grid
"""

import os

import hydra
from omegaconf import DictConfig

from llava_ablate.base.config import run_hydra_main
from llava_ablate.config import register_configs, validate
from llava_ablate.launch.slurm import PREEMPT_SIGNAL

# Slurm's early-warning signal must be the one the training loop checkpoints on; set before
# Hydra's submitit launcher imports submitit, which reads it once. Jobs inherit it.
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate(cfg)  # unknown keys, choices, ranges: before any process group, file or model
    from llava_ablate.launch.task import train_task  # heavy imports after composition

    train_task(cfg)


if __name__ == "__main__":
    run_hydra_main(main)  # a config error's own message is the last thing printed
