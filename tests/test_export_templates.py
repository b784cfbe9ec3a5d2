"""Exports prompt through the processor's own chat template, with the standard multimodal message
format, and give exactly the tokens training used: for every shipped LLM config."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoProcessor

from llava_ablate.base.chat_templates import multimodal_chat_template
from llava_ablate.config import to_object
from llava_ablate.data.conversation import IGNORE_INDEX, tokenize_conversation
from llava_ablate.model.build import build_variant
from llava_ablate.model.export import save_processor

from conftest import compose_config

# vicuna7b / qwen2 name hub models: their (shipped) templates are tested with the tiny tokenizer
# and a tiny random model in their place.
HUB_CONFIGS = ("vicuna7b", "qwen2")
CONFIGS = ("tiny_llama", "tiny_qwen2", "smollm2_135m", *HUB_CONFIGS)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
TINY |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
QUESTION, ANSWER = "What is in the picture?", "A red square."


def build(cache_dir, llm: str):
    cfg = to_object(compose_config(["vision=tiny_clip", f"llm={llm}"]))
    if llm in HUB_CONFIGS:
        cfg.llm.pretrained, cfg.llm.tokenizer, cfg.llm.config = None, "tiny", dict(TINY)
    return build_variant(cfg.vision, cfg.llm, cfg.projector, cache_dir=cache_dir)


@pytest.fixture(scope="module", params=CONFIGS)
def exported(request, cache_dir, tmp_path_factory):
    variant = build(cache_dir, request.param)
    out = tmp_path_factory.mktemp(request.param)
    save_processor(variant.processor, out)
    return variant, AutoProcessor.from_pretrained(out)


def _training_ids(variant) -> tuple[list[int], list[int]]:
    sample = tokenize_conversation(
        "probe",
        [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER}],
        variant.tokenizer,
        num_image_tokens=variant.num_image_tokens,
        max_length=4096,
    )
    return sample.input_ids, sample.labels


def _user(image) -> dict:
    return {
        "role": "user",
        "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}],
    }


def test_stock_prompt_gives_the_training_prompt_tokens(exported):
    variant, processor = exported
    image = Image.new("RGB", (40, 30), (200, 0, 0))
    stock = processor.apply_chat_template(
        [_user(image)], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids, labels = _training_ids(variant)
    prompt = ids[: next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)]
    assert list(stock["input_ids"][0]) == prompt
    assert "pixel_values" in stock


def test_stock_conversation_gives_the_training_sample(exported):
    variant, processor = exported
    messages = [
        _user(Image.new("RGB", (32, 32))),
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    ids, _ = _training_ids(variant)
    enc = processor(images=Image.new("RGB", (32, 32)), text=text, add_special_tokens=False)
    assert enc["input_ids"][0] == ids


def test_string_content_renders_as_the_tokenizer_did(exported):
    variant, processor = exported
    msgs = [
        {"role": "user", "content": f"<image>\n{QUESTION}"},
        {"role": "assistant", "content": "x"},
    ]
    kw = {"tokenize": False}
    assert processor.apply_chat_template(msgs, **kw) == variant.tokenizer.apply_chat_template(
        msgs, **kw
    )


def test_multimodal_template_is_idempotent(cache_dir):
    variant = build(cache_dir, "smollm2_135m")
    once = multimodal_chat_template(variant.tokenizer)
    assert once != variant.tokenizer.chat_template  # SmolLM2's own template is string-only
    assert multimodal_chat_template(variant.tokenizer, once) == once
