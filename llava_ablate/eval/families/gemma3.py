"""Gemma 3: one [C, H, W] image per row and 1-D positions, as LLaVA; its processor takes a
batch's images nested per prompt, and its image tokens attend to each other both ways
(`token_type_ids`, passed with the prompt)."""

from llava_ablate.eval.families.base import Family


class Gemma3(Family):
    name = "gemma3"
    model_types = ("gemma3",)

    def images_arg(self, images: list) -> list:
        return [[image] for image in images]
