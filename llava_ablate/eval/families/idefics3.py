"""Idefics3 and SmolVLM: `pixel_values` [B, tiles, C, H, W] (the image split into tiles plus a
global view, padded to the most tiles) with `pixel_attention_mask`; 1-D positions. SmolVLM's
processor takes a batch's images nested per prompt (Idefics3's takes both)."""

from llava_ablate.eval.families.base import Family


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def images_arg(self, images: list) -> list:
        return [[image] for image in images]
