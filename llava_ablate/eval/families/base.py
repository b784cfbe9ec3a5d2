"""What the scorers need to know about a transformers image-text-to-text family, and nothing else.

The scorers (eval/models.py) are written once against `Family`; its defaults are LLaVA's: one
row of `pixel_values` (and of `image_sizes`, ...) per image, positions that follow from the KV
cache's length. A family that differs overrides only what differs, in its own file. The image
token needs no adapter: every family's config answers `image_token_id` (LLaVA's maps it to
`image_token_index`).
"""

from __future__ import annotations

import torch


class Family:
    name: str = "llava"
    model_types: tuple[str, ...] = ()
    # How the family's makers feed it an image, what `model.image_aspect=auto` follows:
    # "native", the processor takes the image as it is (dynamic resolution, tiles, anyres),
    # unless the family pads it to a square first (LLaVA-1.5: "pad").
    image_aspect: str = "native"

    def images_arg(self, images: list) -> list:
        """`images` (one per prompt) as the processor takes them for a batch."""
        return images

    def one_image(self, images: dict, input_ids, row: int, config) -> dict:
        """The image-side inputs (`images`: all but the per-token ones) of batch row `row`
        alone, one image per row: what a prefill over that row's prompt takes."""
        return {k: v[row : row + 1] for k, v in images.items()}

    def positions(self, model, inputs: dict) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(position ids of a right-padded prompt batch, or None where the model derives them
        from the cache length; the offset per row that the text after each prompt adds to its
        token index). 1-D positions: None and zeros."""
        return None, torch.zeros(len(inputs["input_ids"]), dtype=torch.long)

    def text_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """1-D text positions [B, W] in the layout the model's forward takes."""
        return positions

    def image_tokens(self, image_processor, height: int, width: int, per_tile: int = 0) -> int:
        """Image tokens of a height x width image, by the image processor's own arithmetic
        (dynamic-resolution families; `per_tile`: tokens per tile where tiles are counted)."""
        raise NotImplementedError(f"{self.name}: a fixed image-token count (see its config)")
