"""Train one LLaVA variant: compose the config with Hydra, then build, train and export.

torchrun --nproc_per_node=8 train.py llm=qwen2 data=si32m
python train.py +experiment=tiny_align          # CPU: launches itself on 1 rank
python train.py llm=qwen2 data=si32m --cfg job  # print the composed config
"""

import hydra
from omegaconf import DictConfig

from llava_ablate.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from llava_ablate.train.run import run_training  # heavy imports after composition

    run_training(cfg)


if __name__ == "__main__":
    main()
