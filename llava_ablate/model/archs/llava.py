"""LLaVA-1.5 (LlavaForConditionalGeneration): one fixed-resolution view per image, padded to a
square when `vision.image_aspect=pad`, as LLaVA-1.5 trains."""

from __future__ import annotations

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from llava_ablate.model.archs.base import ProcessorParts, TrainingArch


class Llava(TrainingArch):
    type = "llava"
    model_cls = LlavaForConditionalGeneration
    projector_cls = LlavaMultiModalProjector

    def config(self, arch, common: dict, tower_config, image_seq_length: int) -> LlavaConfig:
        return LlavaConfig(**common, image_seq_length=image_seq_length)

    def processor(self, arch, config, parts: ProcessorParts) -> LlavaProcessor:
        return LlavaProcessor(
            image_processor=parts.image_processor,
            tokenizer=parts.tokenizer,
            patch_size=parts.patch_size,
            vision_feature_select_strategy=parts.select_strategy,
            num_additional_image_tokens=parts.extra_tokens,
            image_token=parts.image_token,
            chat_template=parts.chat_template,
        )
