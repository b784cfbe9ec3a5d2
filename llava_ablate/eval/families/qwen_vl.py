"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: dynamic resolution and multimodal RoPE.

`pixel_values` are the flat patches of all images, [sum of t*h*w, C*t*p*p], with
`image_grid_thw` [n_images, 3] telling how many belong to each. Positions are 3-D (temporal,
height, width) over the image and 1-D after it, shifted by the image's extent (`rope_deltas`):
the model cannot derive them from a cache length, so they are computed here with its own
`get_rope_index` and passed explicitly.
"""

from __future__ import annotations

import torch

from llava_ablate.eval.families.base import Family


class QwenVL(Family):
    name = "qwen_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

    def one_image(self, images: dict, input_ids, row: int, config) -> dict:
        grid = images["image_grid_thw"]
        counts = grid.prod(dim=1).tolist()  # patches per image
        start = sum(counts[:row])
        return {
            "pixel_values": images["pixel_values"][start : start + counts[row]],
            "image_grid_thw": grid[row : row + 1],
        }

    def positions(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        base = getattr(model, model.base_model_prefix)
        position_ids, deltas = base.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs["attention_mask"],
        )
        return position_ids, deltas.view(-1).long()

    def text_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[None].expand(3, *positions.shape)

    def image_tokens(self, image_processor, height: int, width: int, per_tile: int = 0) -> int:
        patches = image_processor.get_number_of_image_patches(height, width, {})
        return patches // image_processor.merge_size**2  # 2x2 patches merge into one token
