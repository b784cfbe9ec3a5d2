"""Build a LLaVA variant as transformers' own LlavaForConditionalGeneration, or (arch=
llava_onevision) LlavaOnevisionForConditionalGeneration with its anyres processor: what differs
per architecture (config, processor, extra parameters, image tokens) is its adapter's, in
model/archs/.

The vision tower and the LLM are loaded (or random-initialised) on their own, then placed into a
skeleton of the arch built on the meta device: no second copy of a 7B model is ever
materialised, and the result saves/loads as a stock `llava` / `llava_onevision` checkpoint
(vLLM, SGLang, lmms-eval `llava_hf` / `llava_onevision`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llava_ablate.base.chat_templates import multimodal_chat_template
from llava_ablate.config import ArchCfg, LLMCfg, ProjectorCfg, VisionCfg
from llava_ablate.data.images import resolve_max_image_side, tower_side
from llava_ablate.model.archs import ProcessorParts, arch_for
from llava_ablate.model.sources import resolve_llm_source, resolve_package_dir
from llava_ablate.model.tokenizer import IMAGE_TOKEN, build_tokenizer  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# The PIL image processors: the torchvision-backed ones would need torchvision, which this
# project does not install (it breaks beside the CPU torch build).
_VISION = {
    "clip": (CLIPVisionConfig, CLIPVisionModel, CLIPImageProcessorPil),
    "siglip": (SiglipVisionConfig, SiglipVisionModel, SiglipImageProcessorPil),
}
_TEXT_ARCH = {"llama": "llama", "qwen2": "qwen2"}
LLAVA = ArchCfg(name="llava", type="llava")


@dataclass
class Variant:
    model: PreTrainedModel  # the arch's transformers class (model/archs/)
    processor: ProcessorMixin
    # Placeholder tokens per image (llava); anyres: per tower view, an image's count depends on
    # its size (llava_ablate/data/anyres.py asks the processor).
    num_image_tokens: int
    anyres: bool = False

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer


def check_attn_implementation(name: str) -> None:
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ImportError(
            "train.attn_implementation=flash_attention_2 but the flash-attn package is not "
            "installed: `pip install flash-attn --no-build-isolation` on a CUDA machine, or use "
            "train.attn_implementation=sdpa"
        )


def build_vision_tower(cfg: VisionCfg, attn: str, dtype: torch.dtype):
    config_cls, model_cls, _ = _VISION[cfg.arch]
    # SigLIP's pooling head is never used by Llava, and an unused module breaks DDP-style
    # reductions; drop it at construction.
    extra = {"vision_use_head": False} if cfg.arch == "siglip" else {}
    processor = build_image_processor(cfg)  # first: it generates a built-in tower once
    if cfg.pretrained:
        src = resolve_package_dir(cfg.pretrained)
        tower = model_cls.from_pretrained(src, dtype=dtype, attn_implementation=attn, **extra)
    else:
        config = config_cls(**{**cfg.config, **extra})
        config._attn_implementation = attn
        tower = model_cls(config).to(dtype)
    return tower, processor


def build_image_processor(cfg: VisionCfg):
    """The tower's image processor alone (no weights): what the data path needs to know, e.g.
    the image side a shard build keeps (data.max_image_side=auto)."""
    config_cls, _, processor_cls = _VISION[cfg.arch]
    if cfg.builtin:  # trained offline on first use (the demo's mini-CLIP)
        from llava_ablate.model.mini_clip import generate_builtin_tower

        generate_builtin_tower(cfg.builtin, Path(cfg.pretrained or ""), **cfg.builtin_recipe)
    if cfg.pretrained:
        return processor_cls.from_pretrained(resolve_package_dir(cfg.pretrained))
    size = config_cls(**cfg.config).image_size
    if cfg.arch == "clip":
        return processor_cls(size={"shortest_edge": size}, crop_size=size)
    return processor_cls(size={"height": size, "width": size})


def shard_image_side(vision: VisionCfg, setting, arch: ArchCfg = LLAVA) -> int | None:
    """data.max_image_side (`setting`) in pixels for this tower and arch: auto reads the
    tower's image processor (`data.images.tower_side`) -- for anyres (llava_onevision), with the
    arch's grid, whose largest side it keeps; None keeps the original images."""
    if setting != "auto":
        return resolve_max_image_side(setting, None)
    try:
        processor = build_image_processor(vision)
    except OSError as e:
        raise OSError(
            f"data.max_image_side=auto reads the image size of vision={vision.name} "
            f"({vision.pretrained}), which cannot be loaded ({e}); make it available, or set "
            "data.max_image_side to a number of pixels (or null: keep the original images)"
        ) from e
    side = int(processor.size.get("height") or processor.size.get("shortest_edge"))
    grid = arch_for(arch.type).tile_grid(arch, side)
    if grid is not None:  # the grid the processor tiles onto, as build_variant sets it
        processor.image_grid_pinpoints = grid
    return resolve_max_image_side("auto", tower_side(processor, vision.image_aspect == "pad"))


def build_llm(cfg: LLMCfg, vocab_size: int, attn: str, dtype: torch.dtype, cache_dir):
    if cfg.builtin:  # pre-trained offline on first use (the demo's mini-LM)
        from llava_ablate.model.mini_lm import generate_builtin_llm

        tokenizer = build_tokenizer(cfg, cache_dir)
        generate_builtin_llm(
            cfg.builtin, Path(cfg.pretrained or ""), tokenizer, cfg.config, **cfg.builtin_recipe
        )
    if cfg.pretrained:
        src = resolve_llm_source(cfg.pretrained, cfg.gguf_file, cache_dir)
        return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation=attn)
    config = AutoConfig.for_model(_TEXT_ARCH[cfg.arch], vocab_size=vocab_size, **cfg.config)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


def _tokens_per_image(vision_cfg: VisionCfg, tower_config) -> tuple[int, int]:
    """(placeholder tokens per image, extra non-patch tokens the tower emits)."""
    extra = 1 if vision_cfg.arch == "clip" else 0  # CLIP's CLS token
    patches = (tower_config.image_size // tower_config.patch_size) ** 2
    keep_extra = extra if vision_cfg.select_strategy == "full" else 0
    return patches + keep_extra, extra


def llava_config(
    vision: VisionCfg,
    projector: ProjectorCfg,
    tower_config,
    text_config,
    image_token_index: int,
    arch: ArchCfg = LLAVA,
) -> PretrainedConfig:
    """The variant's config around its towers' configs: the one place the arch's keys are set
    (build_variant, and launch/estimate.py's meta-device model)."""
    feature_layer = vision.feature_layer
    common = dict(
        vision_config=tower_config,
        text_config=text_config,
        image_token_index=image_token_index,
        vision_feature_layer=feature_layer
        if isinstance(feature_layer, int)
        else list(feature_layer),
        vision_feature_select_strategy=vision.select_strategy,
        projector_hidden_act="gelu" if projector.type == "mlp2x_gelu" else "linear",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    tokens = _tokens_per_image(vision, tower_config)[0]
    return arch_for(arch.type).config(arch, common, tower_config, tokens)


def build_variant(
    vision: VisionCfg,
    llm: LLMCfg,
    projector: ProjectorCfg,
    *,
    arch: ArchCfg = LLAVA,
    cache_dir: str | Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> Variant:
    check_attn_implementation(attn_implementation)
    tokenizer = build_tokenizer(llm, cache_dir)
    tower, image_processor = build_vision_tower(vision, attn_implementation, dtype)
    lm = build_llm(llm, len(tokenizer), attn_implementation, dtype, cache_dir)
    num_image_tokens, extra_tokens = _tokens_per_image(vision, tower.config)

    lm.config.__dict__.pop("quantization_config", None)
    image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = llava_config(vision, projector, tower.config, lm.config, image_token_index, arch)
    # The skeleton would otherwise pick its own default (sdpa) and, sharing the towers'
    # configs, switch them to it: train.attn_implementation must reach every attention layer.
    config._attn_implementation = attn_implementation
    adapter = arch_for(arch.type)
    with torch.device("meta"):
        model = adapter.model_cls(config)
    model.model.vision_tower = tower
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    model.model.multi_modal_projector = build_projector(config, projector, arch).to(dtype)
    adapter.add_parameters(model, config, dtype)  # e.g. OneVision's image_newline
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # The new <image> row is never read (image features replace it) but must exist.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.tie_weights()
    _check_materialised(model)

    # Processor-style list content renders as training's "<image>\nQ" (the eval hook, exports).
    parts = ProcessorParts(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=multimodal_chat_template(tokenizer),
        image_token=IMAGE_TOKEN,
        patch_size=tower.config.patch_size,
        tokens_per_view=(tower.config.image_size // tower.config.patch_size) ** 2 + extra_tokens,
        image_tokens=num_image_tokens,
        extra_tokens=extra_tokens,
        select_strategy=vision.select_strategy,
    )
    processor = adapter.processor(arch, config, parts)
    return Variant(model, processor, num_image_tokens, anyres=adapter.anyres)


def build_projector(config, projector: ProjectorCfg, arch: ArchCfg = LLAVA) -> torch.nn.Module:
    proj = arch_for(arch.type).projector_cls(config)
    if projector.type == "linear":
        # A single linear map expressed in Llava's 2-layer projector: layer 2 is a frozen
        # identity, so exported checkpoints stay stock `llava` while training LLaVA-1's projector.
        with torch.no_grad():
            proj.linear_2.weight.copy_(torch.eye(proj.linear_2.weight.shape[0]))
            proj.linear_2.bias.zero_()
        proj.linear_2.requires_grad_(False)
        proj.linear_2.frozen_identity = True
    return proj


def _check_materialised(model: torch.nn.Module) -> None:
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    meta += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if meta:
        raise RuntimeError(f"parameters left uninitialised after assembly: {meta[:5]}")
