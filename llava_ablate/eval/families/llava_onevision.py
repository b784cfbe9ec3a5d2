"""LLaVA-OneVision (anyres_max): as LLaVA-NeXT, [B, tiles, C, H, W] + `image_sizes`."""

from llava_ablate.eval.families.base import Family


class LlavaOnevision(Family):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
