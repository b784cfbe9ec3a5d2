"""InternVL (2.5, 3): dynamic tiles. `pixel_values` are the tiles of all images, flat
[sum of tiles, C, H, W], and nothing says how many are whose but the prompts: each tile is
`image_seq_length` image tokens. 1-D positions."""

from __future__ import annotations

from llava_ablate.eval.families.base import Family


class InternVL(Family):
    name = "internvl"
    model_types = ("internvl",)

    def one_image(self, images: dict, input_ids, row: int, config) -> dict:
        per_tile = _tokens_per_tile(config)
        tiles = ((input_ids == config.image_token_id).sum(dim=1) // per_tile).tolist()
        start = sum(tiles[:row])
        return {"pixel_values": images["pixel_values"][start : start + tiles[row]]}

    def image_tokens(self, image_processor, height: int, width: int, per_tile: int = 0) -> int:
        tiles = image_processor.get_number_of_image_patches(height, width, {})
        return 2 + tiles * per_tile  # <img> + tokens per tile (thumbnail included) + </img>


def _tokens_per_tile(config) -> int:
    vision = config.vision_config
    side = vision.image_size[0] // vision.patch_size[0]
    return int(side * side * config.downsample_ratio**2)
