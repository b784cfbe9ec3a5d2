"""LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): anyres -- each image is tiled at its
aspect ratio onto a grid of tower-sized crops (`arch.grid_tiles` per side) plus a base view, the
rows separated by a learned `image_newline`; never padded to a square."""

from __future__ import annotations

import logging
import math

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionMultiModalProjector,
)
from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
)

from llava_ablate.base.video_processors import allow_video_processors
from llava_ablate.model.archs.base import ProcessorParts, TrainingArch

log = logging.getLogger(__name__)


def anyres_pinpoints(arch, image_size: int) -> list[list[int]]:
    """LLaVA-OneVision's `image_grid_pinpoints`: every grid of 1..grid_tiles crops per side, in
    pixels (its (1x1),...,(6x6) at 384 px: [[384, 384], [384, 768], ..., [2304, 2304]])."""
    n = arch.grid_tiles
    return [[i * image_size, j * image_size] for i in range(1, n + 1) for j in range(1, n + 1)]


class LlavaOnevision(TrainingArch):
    type = "llava_onevision"
    model_cls = LlavaOnevisionForConditionalGeneration
    projector_cls = LlavaOnevisionMultiModalProjector
    anyres = True

    def config(self, arch, common: dict, tower_config, image_seq_length: int):
        return LlavaOnevisionConfig(
            **common,
            # No video here: a token id no input holds (the config's default is a Qwen2 id).
            video_token_index=-1,
            image_grid_pinpoints=anyres_pinpoints(arch, tower_config.image_size),
            vision_aspect_ratio=arch.vision_aspect_ratio,
        )

    def add_parameters(self, model, config, dtype: torch.dtype) -> None:
        # The row separator of anyres features, as OneVision inits it.
        hidden = config.text_config.hidden_size
        newline = torch.randn(hidden, dtype=dtype) / math.sqrt(hidden)
        model.model.image_newline = torch.nn.Parameter(newline)

    def processor(self, arch, config, parts: ProcessorParts) -> LlavaOnevisionProcessor:
        allow_video_processors()
        size = config.vision_config.image_size
        tower = parts.image_processor
        normalise = dict(image_mean=list(tower.image_mean), image_std=list(tower.image_std))
        processor = LlavaOnevisionProcessor(
            # OneVision's image processor with the tower's own normalisation and view size.
            image_processor=LlavaOnevisionImageProcessorPil(
                size={"height": size, "width": size},
                image_grid_pinpoints=config.image_grid_pinpoints,
                resample=tower.resample,
                **normalise,
            ),
            tokenizer=parts.tokenizer,
            # Never used here (images only), but part of every OneVision processor and export.
            video_processor=LlavaOnevisionVideoProcessor(
                size={"height": size, "width": size}, **normalise
            ),
            num_image_tokens=parts.tokens_per_view,
            vision_feature_select_strategy=parts.select_strategy,
            chat_template=parts.chat_template,
            image_token=parts.image_token,
            vision_aspect_ratio=arch.vision_aspect_ratio,
        )
        log.info(
            "arch=%s: anyres over grids of 1..%d crops of %d px per side (%d pinpoints), "
            "%s, %d tokens per view",
            arch.name,
            arch.grid_tiles,
            size,
            len(config.image_grid_pinpoints),
            arch.vision_aspect_ratio,
            parts.image_tokens,
        )
        return processor

    def tile_grid(self, arch, side: int) -> list[list[int]]:
        return anyres_pinpoints(arch, side)

    def image_tokens(self, vision, arch, tower_config, config):
        from llava_ablate.data.anyres import AnyresImages, size_only_processor

        patches = (tower_config.image_size // tower_config.patch_size) ** 2
        extra = 1 if vision.arch == "clip" else 0  # CLIP's CLS (dropped again by "default")
        processor = size_only_processor(
            tower_config.image_size,
            config.image_grid_pinpoints,
            patches + extra,
            arch.vision_aspect_ratio,
            vision.select_strategy,
        )
        anyres = AnyresImages(processor, patches)
        return (*anyres.largest(), anyres)
