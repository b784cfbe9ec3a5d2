"""Train one LLaVA variant: compose the config with Hydra, then build, train and export.

torchrun --nproc_per_node=8 train.py llm=qwen2 data=si32m
python train.py +experiment=tiny_align          # CPU: launches itself on 1 rank
python train.py llm=qwen2 data=si32m --cfg job  # print the composed config
python train.py -m llm=vicuna7b,qwen2 data=llava665k,si32m hydra/launcher=slurm  # a Slurm grid

A thin wrapper for torchrun: the application is llava_ablate/launch/train_app.py, also installed
as `llava-ablate train ...`.
"""

from llava_ablate.launch.train_app import run

if __name__ == "__main__":
    run()
