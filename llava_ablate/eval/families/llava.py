"""LLaVA-1.5 (and our own exports): one [C, H, W] image per row, 1-D positions."""

from llava_ablate.eval.families.base import Family


class Llava(Family):
    name = "llava"
    model_types = ("llava",)
    image_aspect = "pad"  # LLaVA-1.5's image_aspect_ratio=pad, as it trains and evaluates
