"""How many `<image>` tokens each image of a sample becomes under anyres (LLaVA-OneVision), from
the images' sizes alone: the count is known while tokenising, before any image is decoded, so
length grouping and `recipe.max_length` see a sample's real length.

The counts are the processor's own (`LlavaOnevisionProcessor`): one image in a sample is tiled
(base view + the best grid of crops, unpadded, newline-separated, downsampled beyond
`anyres_max_N`); several images in one sample are one base view each plus a newline, as the
processor and the model (`batch_num_images`) treat multi-image samples.
"""

from __future__ import annotations

import io

from PIL import Image


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header (nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return height, width


def anyres_token_counts(processor, sizes: list[tuple[int, int]]) -> list[int]:
    """Placeholder tokens of each image of one sample, `sizes` as (height, width)."""
    if len(sizes) == 1:
        return list(processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"])
    per_view = processor.num_image_tokens + 1  # one base view + image_newline
    if processor.vision_feature_select_strategy == "default":
        per_view -= 1  # the tower's CLS token is dropped
    return [per_view] * len(sizes)
