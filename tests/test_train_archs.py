"""The training architectures (`arch.type`), one adapter each (llava_ablate/model/archs/): every
allowed `arch.type` has one, and each builds as its own transformers classes, with the
processor, extra parameters and image-token count its adapter owns, and a plan estimate that
counts the very parameters and image tokens of the built model. A new architecture is one file
in model/archs/ and one row here."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import (
    LlavaForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
)

from llava_ablate.base.config import choices_of
from llava_ablate.config import ArchCfg, compose_config, to_object
from llava_ablate.data.anyres import anyres_token_counts
from llava_ablate.launch.estimate import model_size
from llava_ablate.model.archs import ARCHS, arch_for
from llava_ablate.model.build import build_variant

# arch.type -> (its conf/arch option for a CPU test, model class, processor class, pads images)
ROWS = {
    "llava": ("llava", LlavaForConditionalGeneration, LlavaProcessor, True),
    "llava_onevision": (
        "tiny_onevision", LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor, False),
}  # fmt: skip


def test_every_arch_type_has_an_adapter_and_a_row():
    assert set(choices_of(ArchCfg, "type")) == set(ARCHS) == set(ROWS)
    for arch_type, adapter in ARCHS.items():
        assert adapter.type == arch_type and arch_for(arch_type) is adapter


@pytest.mark.parametrize("arch_type", sorted(ROWS))
def test_an_arch_builds_as_its_classes_and_the_plan_counts_what_it_built(arch_type, cache_dir):
    option, model_cls, processor_cls, pads = ROWS[arch_type]
    cfg = to_object(compose_config([f"arch={option}", "vision=tiny_siglip", "llm=tiny_qwen2",
                                    f"paths.cache_dir={cache_dir}"]))  # fmt: skip
    adapter = arch_for(cfg.arch.type)
    variant = build_variant(cfg.vision, cfg.llm, cfg.projector, arch=cfg.arch,
                            cache_dir=cache_dir)  # fmt: skip
    assert type(variant.model) is model_cls and type(variant.processor) is processor_cls
    assert variant.anyres == adapter.anyres == (not pads)
    assert adapter.pads_to_square(cfg.vision) == pads  # vision.image_aspect=pad in both
    # The plan's meta-device model: the same parameters as the one built (extra ones included).
    size = model_size(cfg)
    assert size.params == sum(p.numel() for p in variant.model.parameters())
    # ... and the image tokens of its largest image, by the built processor's own count.
    if adapter.anyres:
        h, w = variant.model.config.image_grid_pinpoints[-1]
        assert size.image_tokens == anyres_token_counts(variant.processor, [(h, w)])[0]
    else:  # what the processor inserts for one image
        enc = variant.processor(images=[Image.new("RGB", (40, 30))], text=["<image>"])
        placeholders = enc["input_ids"][0].count(variant.model.config.image_token_id)
        assert size.image_tokens == variant.num_image_tokens == placeholders
