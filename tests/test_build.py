"""Building variants as stock transformers Llava models, freezing plans, stage hand-over."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava_ablate.config import LearningRates, LoraCfg
from llava_ablate.model.build import check_attn_implementation
from llava_ablate.model.freeze import apply_training_plan, format_plan
from llava_ablate.model.init_from import load_parts
from llava_ablate.model.lora import apply_lora, merged

from conftest import build_tiny


def _prompt(variant, question="What is it?"):
    msgs = [{"role": "user", "content": f"<image>\n{question}"}]
    return variant.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize(
    "vision,llm,tokens", [("tiny_clip", "tiny_llama", 16), ("tiny_siglip", "tiny_qwen2", 16)]
)
def test_variants_build_as_stock_llava_and_run(cache_dir, vision, llm, tokens):
    v = build_tiny(cache_dir, vision, llm)
    assert type(v.model) is LlavaForConditionalGeneration
    assert v.num_image_tokens == tokens == v.model.config.image_seq_length
    assert v.tokenizer.convert_tokens_to_ids("<image>") == v.model.config.image_token_index
    inputs = v.processor(images=Image.new("RGB", (50, 40)), text=_prompt(v), return_tensors="pt")
    assert int((inputs["input_ids"] == v.model.config.image_token_index).sum()) == tokens
    out = v.model(**inputs)
    assert out.logits.shape[-1] == v.model.get_input_embeddings().weight.shape[0]


def test_siglip_drops_its_unused_head(cache_dir):
    v = build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2")
    assert not any(".head." in n for n, _ in v.model.named_parameters())


def test_export_round_trip_generates(cache_dir, tmp_path):
    v = build_tiny(cache_dir)
    v.model.save_pretrained(tmp_path)
    v.processor.save_pretrained(tmp_path)
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    sd, sd2 = v.model.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    inputs = processor(images=Image.new("RGB", (32, 32)), text=_prompt(v), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_training_plans_per_recipe(cache_dir):
    v = build_tiny(cache_dir)
    m = v.model
    n = {
        k: sum(p.numel() for name, p in m.named_parameters() if k in name)
        for k in ("vision_tower", "multi_modal_projector", "language_model")
    }
    n["language_model"] += 0 if m.config.tie_word_embeddings else m.lm_head.weight.numel()

    groups, counts = apply_training_plan(
        m, LearningRates(projector=1e-3), weight_decay=0.0, lora=False, vision_feature_layer=-2
    )
    assert counts["projector"].trainable == n["multi_modal_projector"]
    assert counts["vision"].trainable == counts["llm"].trainable == 0
    assert {g["lr"] for g in groups} == {1e-3}
    assert "frozen" in format_plan(counts)

    groups, counts = apply_training_plan(
        m,
        LearningRates(vision=2e-6, projector=1e-5, llm=1e-5),
        weight_decay=0.1,
        lora=False,
        vision_feature_layer=-2,
    )
    post_ln = sum(p.numel() for name, p in m.named_parameters() if "post_layernorm" in name)
    assert counts["vision"].trainable == n["vision_tower"] - post_ln  # unused layer stays frozen
    assert counts["llm"].trainable == counts["llm"].total == n["language_model"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["vision"]["lr"] == 2e-6 and by_name["vision_no_decay"]["weight_decay"] == 0.0
    assert by_name["llm"]["weight_decay"] == 0.1


def test_lora_trains_adapters_and_projector_then_merges(cache_dir):
    v = build_tiny(cache_dir)
    base_q = v.model.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = apply_lora(v.model, LoraCfg(r=4, alpha=8, dropout=0.0))
    _, counts = apply_training_plan(
        model,
        LearningRates(projector=1e-4, llm=1e-4),
        weight_decay=0.0,
        lora=True,
        vision_feature_layer=-2,
    )
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    assert 0 < counts["llm"].trainable < counts["llm"].total
    assert counts["vision"].trainable == 0 and counts["projector"].trainable > 0
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # make the adapter non-zero so merging changes weights
    plain = merged(model)
    assert type(plain) is LlavaForConditionalGeneration
    q = plain.model.language_model.layers[0].self_attn.q_proj
    assert not hasattr(q, "lora_A") and not torch.equal(q.weight, base_q)


def test_linear_projector_is_one_linear_map(cache_dir):
    v = build_tiny(cache_dir, projector="linear")
    proj = v.model.model.multi_modal_projector
    x = torch.randn(3, proj.linear_1.in_features)
    assert torch.allclose(proj(x), proj.linear_1(x), atol=1e-6)
    _, counts = apply_training_plan(
        v.model,
        LearningRates(projector=1e-3),
        weight_decay=0.0,
        lora=False,
        vision_feature_layer=-2,
    )
    assert (
        counts["projector"].trainable == proj.linear_1.weight.numel() + proj.linear_1.bias.numel()
    )


def test_init_from_copies_only_the_projector(cache_dir, tmp_path):
    src = build_tiny(cache_dir)
    with torch.no_grad():
        for p in src.model.model.multi_modal_projector.parameters():
            p.add_(1.0)
    src.model.save_pretrained(tmp_path)  # transformers' saved (llava-hf) key layout
    dst = build_tiny(cache_dir)
    before_llm = dst.model.lm_head.weight.detach().clone()
    keys = load_parts(dst.model, tmp_path, ["projector"])
    assert keys and all("multi_modal_projector" in k for k in keys)
    for a, b in zip(
        src.model.model.multi_modal_projector.parameters(),
        dst.model.model.multi_modal_projector.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert torch.equal(dst.model.lm_head.weight, before_llm)


def test_init_from_rejects_another_architecture(cache_dir, tmp_path):
    wider = ("vision.config.hidden_size=48",)
    build_tiny(cache_dir, overrides=wider).model.save_pretrained(tmp_path)
    with pytest.raises((ValueError, KeyError), match="multi_modal_projector"):
        load_parts(build_tiny(cache_dir).model, tmp_path, ["projector"])
    with pytest.raises(FileNotFoundError, match="previous stage"):
        load_parts(build_tiny(cache_dir).model, tmp_path / "nothing", ["projector"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_attention_implementation_reaches_every_attention_layer(cache_dir, attn):
    """train.attn_implementation, not the Llava skeleton's own default, in the tower and the
    LLM alike (they share their configs with the skeleton)."""
    from llava_ablate.config import compose_config, to_object
    from llava_ablate.model.build import build_variant

    cfg = to_object(compose_config(["vision=tiny_clip", "llm=tiny_qwen2"]))
    model = build_variant(cfg.vision, cfg.llm, cfg.projector, arch=cfg.arch, cache_dir=cache_dir,
                          attn_implementation=attn).model  # fmt: skip
    layers = [m for n, m in model.named_modules() if n.endswith(("self_attn", "attention"))]
    assert len(layers) == 4  # 2 tower layers, 2 LLM layers
    assert {m.config._attn_implementation for m in layers} == {attn}


def test_flash_attention_without_the_package_fails_clearly():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        check_attn_implementation("flash_attention_2")  # installed: must pass
        return
    with pytest.raises(ImportError, match="flash-attn.*attn_implementation=sdpa"):
        check_attn_implementation("flash_attention_2")


@pytest.mark.parametrize("llm,stop", [("tiny_llama", "</s>"), ("tiny_qwen2", "<|im_end|>")])
def test_end_of_turn_is_the_templates_answer_closer(cache_dir, llm, stop):
    from llava_ablate.model.export import end_of_turn_id

    processor = build_tiny(cache_dir, llm=llm).processor
    assert processor.tokenizer.convert_ids_to_tokens(end_of_turn_id(processor)) == stop
