"""LLaVA-NeXT (anyres): `pixel_values` [B, tiles, C, H, W] padded to the most tiles and
`image_sizes` [B, 2], one row per image; 1-D positions. The defaults hold."""

from llava_ablate.eval.families.base import Family


class LlavaNext(Family):
    name = "llava_next"
    model_types = ("llava_next",)
