"""An export's model card (export/README.md), read back with huggingface_hub's own parser: the
Hub metadata, the variant, mixture, steps, tokens, command and every evaluation with its CI.
(The end-to-end path -- written at export, updated by `llava-ablate evaluate` -- runs in
tests/test_install.py.)"""

from __future__ import annotations

import json
from dataclasses import replace

from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from llava_ablate.model.card import (
    CARD,
    EVALUATIONS,
    INFO,
    CardEvaluation,
    read_evaluations,
    record_evaluations,
    write_model_card,
)

from conftest import compose_config

COMMAND = "llava-ablate train llm=qwen2 data=llava665k recipe.init_from=runs/s1/export"


def export_dir(tmp_path, overrides=("llm=qwen2", "data=llava665k")):
    """An export directory's llava_ablate.json as train/run.py writes it (no weights needed)."""
    dcfg = compose_config(list(overrides))
    info = {
        "variant": {
            k: OmegaConf.to_container(dcfg[k], resolve=True)
            for k in ("arch", "vision", "llm", "projector", "data", "recipe")
        },
        "steps": 5198,
        "tokens": 1_234_567_890,
        "precision": "bf16",
        "world_size": 8,
        "config_hash": "a7043dbd",
        "command": COMMAND,
    }
    out = tmp_path / "qwen2-clip_l14_336-mlp2x_gelu-llava665k-finetune-a7043dbd" / "export"
    out.mkdir(parents=True)
    (out / INFO).write_text(json.dumps(info))
    return out


HOOK = CardEvaluation("imagenet", "likelihood", 0.6123, 0.6001, 0.6244, 5000, 26, "f" * 40,
                      "this run, step 5198", {"value": 0.41, "ci_low": 0.38, "ci_high": 0.44,
                                              "n": 900})  # fmt: skip


def test_card_metadata_and_sections_read_back_with_huggingface_hub(tmp_path):
    out = export_dir(tmp_path, ("llm=qwen2", "data=llava665k", "arch=llava_onevision"))
    record_evaluations(out, [HOOK])
    card = ModelCard.load(out / CARD)
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == ["openai/clip-vit-large-patch14-336", "Qwen/Qwen2-7B-Instruct"]
    assert {"llava", "llm:qwen2", "data:llava665k", "arch:llava_onevision"} <= set(meta["tags"])
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == (
        "imagenet", "accuracy", 0.6123)  # fmt: skip
    text = card.text
    assert "| llm | qwen2 | `Qwen/Qwen2-7B-Instruct` |" in text
    assert "| arch | llava_onevision | transformers `llava_onevision` |" in text
    assert "steps: 5198 optimizer steps of global batch 128" in text
    assert "tokens seen: 1,234,567,890" in text
    assert COMMAND in text and "on 8 rank(s)" in text and "a7043dbd" in text
    assert "## Data mixture: llava665k" in text and "| llava_v1_5_mix665k |" in text
    assert (
        "| imagenet | likelihood | 26 | 0.612 [0.600, 0.624] | 5000 | 0.410 [0.380, 0.440] |"
        in text
    )


def test_later_evaluations_replace_the_same_questions_and_add_new_ones(tmp_path):
    out = export_dir(tmp_path)
    write_model_card(out)  # at export, before any evaluation
    assert "Not evaluated yet" in (out / CARD).read_text()
    assert ModelCard.load(out / CARD).data.eval_results is None
    record_evaluations(out, [HOOK])
    again = replace(HOOK, accuracy=0.63, ci_low=0.62, ci_high=0.64, source="evaluate")
    other = replace(HOOK, dataset="cub200", accuracy=0.5, ci_low=0.45, ci_high=0.55, source="e")
    record_evaluations(out, [again, other])
    assert read_evaluations(out) == [again, other]  # the same questions: the newest result
    text = (out / CARD).read_text()
    assert "0.630 [0.620, 0.640]" in text and "0.612" not in text and "| cub200 |" in text
    assert len(json.loads((out / EVALUATIONS).read_text())) == 2


def test_random_init_and_local_weights_are_not_base_models(tmp_path):
    out = export_dir(
        tmp_path, ("llm=tiny_qwen2", "vision=tiny_clip", f"vision.pretrained={tmp_path}")
    )
    write_model_card(out)
    meta = ModelCard.load(out / CARD).data.to_dict()
    assert "base_model" not in meta  # a hub would reject a local path or a random init
    assert "| llm | tiny_qwen2 | random init |" in (out / CARD).read_text()


def test_the_card_lists_what_was_not_trained_on_whole(tmp_path):
    out = export_dir(tmp_path)
    info = json.loads((out / INFO).read_text())
    info["data_dropped"] = {
        "run": {"too_long": 3},
        "build": {"missing_image": 2},
        "truncated": {"llava_v1_5_mix665k": {"samples": 41, "tokens_dropped": 90210}},
    }
    (out / INFO).write_text(json.dumps(info))
    write_model_card(out)
    text = ModelCard.load(out / CARD).text
    assert "## Data not trained on whole" in text
    assert "- skipped at build: missing_image 2" in text
    assert "- skipped while training: too_long 3" in text
    assert (
        "- truncated at max_length 2048: llava_v1_5_mix665k: 41 samples, 90210 tokens dropped"
        in text
    )


def test_a_video_capable_export_says_how_to_load_without_torchvision(tmp_path):
    """The code itself runs in tests/test_processors_without_torchvision.py (`bare`)."""
    onevision = ModelCard.load(
        write_model_card(export_dir(tmp_path / "ov", ("arch=llava_onevision",)))
    )
    llava = ModelCard.load(write_model_card(export_dir(tmp_path / "llava", ("arch=llava",))))
    line = 'runpy.run_path("<this directory>/without_torchvision.py")["allow_video_processors"]()'
    assert line in onevision.text and "runpy" not in llava.text
