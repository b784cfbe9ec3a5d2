"""Evaluate a model on the classification MCQs: compose the config, score, write results.

python evaluate.py model.path=runs/<variant>/export eval/datasets=[imagenet,cub200]
python evaluate.py model.type=clip model.path=openai/clip-vit-large-patch14-336
torchrun --nproc_per_node=8 evaluate.py model.path=llava-hf/llava-1.5-7b-hf eval=hard
python evaluate.py model.path=... eval=protocol eval.questions.image_encoder=clip:<id>   # card
python evaluate.py --cfg job   # print the composed config
python evaluate.py ... shard.index=0 shard.count=4   # a quarter of the questions; then shard.count=1 merges
python -m llava_ablate.launch paper_models   # many models x datasets: an evaluation grid

A thin wrapper for torchrun: the application is llava_ablate/launch/evaluate_app.py, also
installed as `llava-ablate evaluate ...`.
"""

from llava_ablate.launch.evaluate_app import run

if __name__ == "__main__":
    run()
