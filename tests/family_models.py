"""Tiny random models of transformers' image-text-to-text families, built offline from their
configs (2 text layers, hidden 64), each with its real processor class and its published chat
template, on the project's tiny BPE tokenizer plus the family's special tokens.

A builder returns (model, processor). The templates are transcribed from the checkpoints named
above each (their `chat_template.json`), as far as image + text turns go; tool calls, system
prompt options and dates are left out where they do not change these turns. Our own exports
(llava, llava_onevision) are built by the project's builder with the templates it ships.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from llava_ablate.base.video_processors import (
    allow_video_processors,
    processor_class,
    video_processor_class,
)
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

from conftest import build_tiny

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip

# Qwen/Qwen2-VL-7B-Instruct (Qwen2.5-VL-7B-Instruct's is the same)
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
# Qwen/Qwen3-VL-8B-Instruct: no default system turn; images as Qwen2-VL's.
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


# llava-hf/llava-v1.6-mistral-7b-hf
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% endif %}{% endfor %}"
)
# google/gemma-3-4b-it, without its system-turn branch
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
# mistralai/Mistral-Small-3.1-24B-Instruct-2503, without its default system prompt
MISTRAL3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{- '[INST]' }}{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for block in message['content'] %}{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}{%- endfor %}"
    "{%- endif %}{{- '[/INST]' }}{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{{- message['content'][0]['text'] }}{%- endif %}{{- eos_token }}{%- endif %}{%- endfor %}"
)
# HuggingFaceTB/SmolVLM-Instruct (Idefics3's is the same after its own begin-of-text)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# OpenGVLab/InternVL3-1B-hf
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8)  # fmt: skip


def llava_next(cache_dir: Path):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = family_tokenizer(cache_dir, LLAVA_NEXT_TEMPLATE, {"image_token": "<image>"})
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=pinpoints,
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=images, tokenizer=tok, patch_size=8, chat_template=LLAVA_NEXT_TEMPLATE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    config = LlavaNextConfig(
        vision_config=dict(CLIP, model_type="clip_vision_model"),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tok), **_specials(tok)),
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config).eval(), processor


def gemma3(cache_dir: Path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    names = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
             "eoi_token": "<end_of_image>"}  # fmt: skip
    tok = family_tokenizer(cache_dir, GEMMA3_TEMPLATE, names)
    images = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4,
                                chat_template=GEMMA3_TEMPLATE)  # fmt: skip
    config = Gemma3Config(
        vision_config=dict(CLIP, model_type="siglip_vision_model"),
        text_config=dict(TEXT, vocab_size=len(tok), head_dim=16, sliding_window=64,
                         **_specials(tok)),
        mm_tokens_per_image=4,
        **_ids(tok, image_token_index="<image_soft_token>", boi_token_index="<start_of_image>",
               eoi_token_index="<end_of_image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(config).eval(), processor


def mistral3(cache_dir: Path):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import (
        PixtralImageProcessorPil,
    )

    names = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
             "image_end_token": "[IMG_END]"}  # fmt: skip
    tok = family_tokenizer(cache_dir, MISTRAL3_TEMPLATE, names)
    images = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=8)
    processor = processor_class("mistral3")(image_processor=images, tokenizer=tok, patch_size=8,
                                 spatial_merge_size=2, chat_template=MISTRAL3_TEMPLATE)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=16, image_size=64, patch_size=8)  # fmt: skip
    config = Mistral3Config(
        vision_config=dict(vision, model_type="pixtral"),
        text_config=dict(TEXT, model_type="mistral", vocab_size=len(tok), head_dim=16,
                         **_specials(tok)),
        spatial_merge_size=2, vision_feature_layer=-1,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
    )  # fmt: skip
    torch.manual_seed(0)
    return Mistral3ForConditionalGeneration(config).eval(), processor


def _idefics3(cache_dir: Path, config_cls, model_cls, processor_cls, images_cls, **video):
    names = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}  # fmt: skip
    tok = family_tokenizer(cache_dir, SMOLVLM_TEMPLATE, names)
    # 64 px tiles of at most 32 px: an image splits into up to 2x2 tiles + the global one.
    images = images_cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                        do_image_splitting=True)  # fmt: skip
    processor = processor_cls(image_processor=images, tokenizer=tok, image_seq_len=4,
                              chat_template=SMOLVLM_TEMPLATE, **video)  # fmt: skip
    config = config_cls(
        vision_config=dict(CLIP, model_type=f"{config_cls.model_type}_vision"),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tok), **_specials(tok)),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return model_cls(config).eval(), processor


def idefics3(cache_dir: Path):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    return _idefics3(cache_dir, Idefics3Config, Idefics3ForConditionalGeneration,
                     Idefics3Processor, Idefics3ImageProcessorPil)  # fmt: skip


def smolvlm(cache_dir: Path):
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
    )

    allow_video_processors()
    video = video_processor_class("smolvlm")()
    return _idefics3(cache_dir, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor,
                     SmolVLMImageProcessorPil, video_processor=video)  # fmt: skip


def internvl(cache_dir: Path):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    allow_video_processors()
    names = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
             "end_image_token": "</img>", "video_token": "<video>"}  # fmt: skip
    tok = family_tokenizer(cache_dir, INTERNVL_TEMPLATE, names)
    # Dynamic tiles: 1 to 4 crops of 32 px plus a thumbnail, as many as the aspect needs.
    images = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True,
                                      min_patches=1, max_patches=4)  # fmt: skip
    processor = InternVLProcessor(image_processor=images, tokenizer=tok,
                                  video_processor=video_processor_class("internvl")(),
                                  image_seq_length=4, chat_template=INTERNVL_TEMPLATE)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=[32, 32], patch_size=[8, 8])  # fmt: skip
    config = InternVLConfig(
        vision_config=vision,
        text_config=dict(TEXT, model_type="qwen2", vocab_size=len(tok), **_specials(tok)),
        downsample_ratio=0.5, vision_feature_layer=-1,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return InternVLForConditionalGeneration(config).eval(), processor


BUILDERS = {
    "llava": llava,
    "llava_next": llava_next,
    "llava_onevision": llava_onevision,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "internvl": internvl,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
    "gemma3": gemma3,
    "mistral3": mistral3,
}
