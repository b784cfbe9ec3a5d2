"""Tiny random models of transformers' image-text-to-text families, built offline from their
configs (2 text layers, hidden 64), each with its real processor class and its published chat
template, on the project's tiny BPE tokenizer plus the family's special tokens.

A builder returns (model, processor). The templates are the families' published ones (from each
model's `chat_template.json` on the hub) as far as image + text turns go; tool calls, system
prompt options and video branches are left out where they do not change these turns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from llava_ablate.base.video_processors import allow_video_processors, video_processor_class
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

from conftest import build_tiny

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip

QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct: no default system turn; images as Qwen2-VL's.
QWEN3_VL_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}  # fmt: skip


def family_tokenizer(cache_dir: Path, template: str, specials: dict[str, str]):
    """The tiny ChatML tokenizer with the family's special tokens (named, as the hub's are)."""
    base = cache_dir / "tokenizers" / "tiny-qwen2"
    build_tiny_tokenizer(base, "qwen2")
    return AutoTokenizer.from_pretrained(base, extra_special_tokens=specials)


def _specials(tok) -> dict:
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)  # fmt: skip


def _ids(tok, **names) -> dict:
    return {key: tok.convert_tokens_to_ids(token) for key, token in names.items()}


def llava(cache_dir: Path):
    v = build_tiny(cache_dir)  # our own export: CLIP + Llama, vicuna_v1
    return v.model, v.processor


def llava_onevision(cache_dir: Path):
    v = build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2", overrides=("arch=tiny_onevision",))
    return v.model, v.processor


def _qwen(cache_dir, model_cls, processor_cls, image_processor, vision: dict, template: str):
    allow_video_processors()  # no torchvision here
    tok = family_tokenizer(cache_dir, template, QWEN_TOKENS)
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor_class(model_cls.config_class.model_type)(),
        chat_template=template,
    )
    text = dict(TEXT, vocab_size=len(tok), head_dim=16, **_specials(tok),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]})  # fmt: skip
    config = model_cls.config_class(
        text_config=text,
        vision_config=vision,
        **_ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return model_cls(config).eval(), processor


def _qwen_images(patch: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    unit = patch * 2  # a merged 2x2 patch
    # 4 to 16 merged patches: images of different sizes get different token counts.
    return Qwen2VLImageProcessorPil(
        patch_size=patch, min_pixels=unit * unit * 4, max_pixels=unit * unit * 16
    )


def qwen2_vl(cache_dir: Path):
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    return _qwen(cache_dir, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, _qwen_images(14),
                 vision, QWEN2_VL_TEMPLATE)  # fmt: skip


def qwen2_5_vl(cache_dir: Path):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1])  # fmt: skip
    return _qwen(cache_dir, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                 _qwen_images(14), vision, QWEN2_VL_TEMPLATE)  # fmt: skip


def qwen3_vl(cache_dir: Path):
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=64, deepstack_visual_indexes=[0])  # fmt: skip
    return _qwen(cache_dir, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, _qwen_images(16),
                 vision, QWEN3_VL_TEMPLATE)  # fmt: skip


BUILDERS = {
    "llava": llava,
    "llava_onevision": llava_onevision,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
}
