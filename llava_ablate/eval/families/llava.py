"""LLaVA-1.5 (and our own exports): one [C, H, W] image per row, 1-D positions."""

from llava_ablate.eval.families.base import Family


class Llava(Family):
    name = "llava"
    model_types = ("llava",)
