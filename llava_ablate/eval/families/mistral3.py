"""Mistral 3 (Pixtral tower): `pixel_values` [B, C, H, W] padded to the largest image, with
`image_sizes` [B, 2]; rows of [IMG] tokens end in [IMG_BREAK]; 1-D positions. The defaults hold."""

from llava_ablate.eval.families.base import Family


class Mistral3(Family):
    name = "mistral3"
    model_types = ("mistral3",)
