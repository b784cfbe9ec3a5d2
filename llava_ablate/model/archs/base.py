"""What training needs to know about an architecture (`arch.type`), and nothing else.

`model/build.py`, the plan's size estimate (`launch/estimate.py`) and the training run ask the
adapter of the run's `arch.type` (archs/__init__.py: ARCHS); the defaults are LLaVA-1.5's: one
fixed-resolution view per image, `image_seq_length` placeholder tokens each. A new architecture
is one file here with a `TrainingArch` subclass, one entry in ARCHS and one row in
tests/test_train_archs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from llava_ablate.data.images import image_aspect


@dataclass(frozen=True)
class ProcessorParts:
    """What every arch's processor is made of: the tower's image processor, the tokenizer, and
    the tower's token counts per view."""

    image_processor: object
    tokenizer: object
    chat_template: str
    image_token: str
    patch_size: int
    tokens_per_view: int  # what the tower emits per view (CLIP's CLS included)
    image_tokens: int  # placeholder tokens per view (the CLS kept only by select_strategy=full)
    extra_tokens: int  # non-patch tokens the tower emits (CLIP's CLS: 1)
    select_strategy: str


class TrainingArch:
    """LLaVA-1.5's defaults; an arch overrides what differs, in its own file."""

    type: str = ""
    model_cls: type[PreTrainedModel]
    projector_cls: type[torch.nn.Module]
    anyres: bool = False  # image tokens depend on the image's size (data/anyres.py counts them)

    def config(self, arch, common: dict, tower_config, image_seq_length: int) -> PretrainedConfig:
        """The variant's config around its towers' configs (`common`: the keys every arch sets)."""
        raise NotImplementedError

    def add_parameters(self, model, config, dtype: torch.dtype) -> None:
        """Parameters the arch has beyond tower, projector and LLM, initialised as its makers do."""

    def processor(self, arch, config, parts: ProcessorParts) -> ProcessorMixin:
        raise NotImplementedError

    def pads_to_square(self, vision) -> bool:
        """Whether training (and the eval hook) pads images to a square first: as asked
        (`vision.image_aspect`), unless the arch tiles at the image's aspect ratio."""
        return image_aspect(vision.image_aspect, anyres=self.anyres) == "pad"

    def tile_grid(self, arch, side: int) -> list[list[int]] | None:
        """The grid an image may be tiled onto, in pixels (None: one view per image)."""
        return None

    def image_tokens(self, vision, arch, tower_config, config):
        """(placeholder tokens per image, tokens the tower encodes per image, the anyres
        counter or None) for the plan's memory and time estimate, at the largest image."""
        return getattr(config, "image_seq_length", 0), None, None
