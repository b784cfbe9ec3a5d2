"""How many `<image>` tokens each image of a sample becomes under anyres (LLaVA-OneVision), from
the images' sizes alone: the count is known while tokenising, before any image is decoded, so
length grouping and `recipe.max_length` see a sample's real length.

The arithmetic is the processor's own (`LlavaOnevisionProcessor._get_number_of_features`): one
image in a sample is tiled (base view + the best grid of crops, unpadded, newline-separated,
downsampled beyond `anyres_max_N`); several images in one sample are one base view each plus a
newline, as the processor and the model (`batch_num_images`) treat multi-image samples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header (nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return height, width


def anyres_token_counts(processor, sizes: list[tuple[int, int]]) -> list[int]:
    """Placeholder tokens of each image of one sample, `sizes` as (height, width)."""
    drop = 1 if processor.vision_feature_select_strategy == "default" else 0  # CLIP's CLS
    if len(sizes) != 1:
        return [processor.num_image_tokens + 1 - drop] * len(sizes)  # base view + newline
    view = processor.image_processor.size
    count = processor._get_number_of_features(*sizes[0], view["height"], view["width"])
    return [count - drop]


def tower_views(processor, size: tuple[int, int]) -> int:
    """Views the vision tower encodes for one single image of `size` (base + grid crops)."""
    ip = processor.image_processor
    return image_size_to_num_patches(size, ip.image_grid_pinpoints, ip.size["height"])


def size_only_processor(
    view: int,
    pinpoints: list[list[int]],
    tokens_per_view: int,
    vision_aspect_ratio: str,
    select_strategy: str,
) -> LlavaOnevisionProcessor:
    """A LlavaOnevisionProcessor that only counts tokens for image sizes: no tokenizer, so a
    plan can size anyres jobs with the processor's own arithmetic before any download."""
    processor = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    processor.image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": view, "width": view}, image_grid_pinpoints=pinpoints
    )
    processor.num_image_tokens = tokens_per_view
    processor.vision_aspect_ratio = vision_aspect_ratio
    processor.vision_feature_select_strategy = select_strategy
    return processor


@dataclass
class AnyresImages:
    """Tokens per image under anyres, from the processor's own arithmetic (the plan's sizes)."""

    processor: object  # a size-only LlavaOnevisionProcessor
    tokens_per_view: int  # placeholder tokens of one view (no newline)

    def placeholders(self, height: float, width: float) -> int:
        return anyres_token_counts(self.processor, [(round(height), round(width))])[0]

    def tower_tokens(self, height: float, width: float) -> int:
        size = (round(height), round(width))
        return tower_views(self.processor, size) * self.tokens_per_view

    def largest(self) -> tuple[int, int]:
        """(placeholder, tower) tokens of the largest images: one that fills a grid exactly
        is never unpadded, so the most tokens come from a pinpoint-shaped image."""
        sizes = self.processor.image_processor.image_grid_pinpoints
        return (
            max(self.placeholders(h, w) for h, w in sizes),
            max(self.tower_tokens(h, w) for h, w in sizes),
        )
