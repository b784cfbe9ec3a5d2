"""The demo's pretrained LLM (llm=mini_lm): small_qwen2's very model, pre-trained offline on
text about the 30 mini-classify classes on first use, cached, and loaded like any checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from llava_ablate.config import CONF_DIR
from llava_ablate.data.mini_classify import ABSENT, RARE, classes
from llava_ablate.model.mini_lm import corpus
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

from conftest import build_tiny

# A narrow model of the same family, so the built-in path runs in seconds in the default suite.
NARROW = ["llm.config.hidden_size=32", "llm.config.intermediate_size=64",
          "llm.config.num_hidden_layers=1"]  # fmt: skip


def test_mini_lm_is_small_qwen2_with_pretrained_weights():
    """Same shape, tokenizer and template: the same cost per step as the random arm."""
    mini = yaml.safe_load((CONF_DIR / "llm" / "mini_lm.yaml").read_text())
    small = yaml.safe_load((CONF_DIR / "llm" / "small_qwen2.yaml").read_text())
    for key in ("arch", "tokenizer", "chat_template", "config"):
        assert mini[key] == small[key], key
    assert small["pretrained"] is None and mini["builtin"] == "mini_lm"


def test_the_text_describes_every_class_the_visual_data_lacks(tmp_path):
    tok = build_tiny_tokenizer(tmp_path / "tok", "qwen2")
    names = [(c.name, c.group) for c in classes()]
    text = "\n".join(corpus(names, tok, random.Random(0), 3000))
    for name in RARE + ABSENT:
        assert f"{name}?" in text and f"A {name} is" in text, name  # questions and descriptions
    assert "<|im_start|>assistant\n" in text  # chat turns in the tokenizer's own template
    with pytest.raises(ValueError, match="no description for classes \\['letter Q'\\]"):
        corpus([("letter Q", "letter")], tok, random.Random(0), 1)


@pytest.mark.slow  # three builds and mini-classify: ~1.5 min on 2 idle cores
@pytest.mark.parametrize("vision", ["tiny_clip"])
def test_llm_mini_lm_is_pretrained_on_first_use_then_cached(tmp_path, vision):
    torch.set_num_threads(1)
    # The narrow model needs the higher lr to show a clear fall in 120 steps (set through
    # llm.builtin_recipe, as a user would).
    overrides = (f"paths.cache_dir={tmp_path}", *NARROW, "llm.builtin_recipe.lr=3e-3")
    variant = build_tiny(tmp_path, vision, "mini_lm", overrides=overrides)
    out = tmp_path / "mini_lm"
    log = json.loads((out / "training.json").read_text())
    assert log["loss_last"] < 0.7 * log["loss_first"], log  # the causal-LM loss really fell
    # The variant's LLM holds the pre-trained weights, not a fresh random init.
    saved = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    embed = variant.model.get_input_embeddings().weight  # + the <image> row, if it was added
    assert torch.equal(embed[: saved.shape[0]], saved)
    built = (out / "build.json").stat().st_mtime_ns

    build_tiny(tmp_path, vision, "mini_lm", overrides=overrides)  # cached: not trained again
    assert (out / "build.json").stat().st_mtime_ns == built
    # Another recipe (here: another shape) rebuilds instead of loading stale weights.
    build_tiny(tmp_path, vision, "mini_lm", overrides=(*overrides, "llm.config.hidden_size=48"))
    assert (out / "build.json").stat().st_mtime_ns != built
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 48


def test_the_pretraining_recipe_is_in_the_run_identity(tmp_path):
    """A changed mini-LM recipe names new runs (the old runs' weights came from the old model);
    an LLM without one (every run before the key existed) keeps its identity."""
    from llava_ablate.config import compose_config
    from llava_ablate.demo.plan import run_dir_of
    from llava_ablate.run_identity import result_config

    common = ["+experiment=demo_stage1", f"train.runs_root={tmp_path}"]
    mini = run_dir_of([*common, "llm=mini_lm"])
    assert run_dir_of([*common, "llm=mini_lm", "llm.builtin_recipe.lr=3e-3"]) != mini
    assert run_dir_of([*common, "llm=mini_lm", "llm.builtin_recipe.lr=1e-3"]) == mini
    hashed = result_config(compose_config([*common, "llm=mini_lm"]))
    assert hashed["llm"]["builtin_recipe"]["lr"] == 1e-3
    assert (
        "builtin_recipe" not in result_config(compose_config([*common, "llm=small_qwen2"]))["llm"]
    )


def test_an_unknown_recipe_key_fails_before_any_work(tmp_path):
    from llava_ablate.model.mini_lm import generate_builtin_llm

    tok = build_tiny_tokenizer(tmp_path / "tok", "qwen2")
    with pytest.raises(ValueError, match=r"llm.builtin_recipe: unknown key\(s\) \['epochs'\]"):
        generate_builtin_llm("mini_lm", tmp_path / "mini_lm", tok, {}, epochs=3)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \[\], missing \['seed'\]"):
        generate_builtin_llm("mini_lm", tmp_path / "mini_lm", tok, {},
                             steps=1, batch=1, length=8, lr=1e-3)  # fmt: skip
    assert not (tmp_path / "mini_lm").exists() and not (tmp_path / "mini_classify").exists()


def test_lettered_questions_use_the_evaluators_format_and_fit_a_window(tmp_path):
    """The `mcq_share` documents: the evaluator's `A. name` lines and instruction, the answer
    the letter of the described class; windows start at a document so none is cut."""
    from llava_ablate.base.mcq import LETTERS
    from llava_ablate.eval_config import QuestionsCfg
    from llava_ablate.model.mini_lm import LOOKS, mcq_document

    tok = build_tiny_tokenizer(tmp_path / "tok", "qwen2")
    names = [c.name for c in classes()]
    assert QuestionsCfg().instruction in mcq_document(names[0], names, tok, random.Random(0))
    for seed in range(20):
        name = names[seed % len(names)]
        doc = mcq_document(name, names, tok, random.Random(seed))
        answer = doc.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
        assert answer in LETTERS and f"\n{answer}. {name}\n" in doc
        assert LOOKS[name] in doc or f"the {name}?" in doc


def test_without_lettered_questions_the_corpus_is_the_one_before_them(tmp_path):
    """`mcq_share` absent or 0 draws nothing more: the default recipe's corpus (hence its
    fingerprint's meaning and its weights) is the one built before the option existed."""
    import hashlib

    tok = build_tiny_tokenizer(tmp_path / "tok", "qwen2")
    docs = corpus([(c.name, c.group) for c in classes()], tok, random.Random(0), 200)
    digest = hashlib.sha256("\n".join(docs).encode()).hexdigest()
    assert digest == "fb6607db0b3b67dbed539668ae236316064280a6a9c7f302033d9b7023dc7d02"


def test_name_vectors_work_inside_a_running_hydra_app(tmp_path, monkeypatch):
    """mini-CLIP's `concept: mini_lm` reads the mini-LM's name vectors from inside train.py's
    Hydra app (where a second compose is refused): one vector per class, from the cached build."""
    from hydra import initialize_config_module
    from transformers import AutoConfig

    from llava_ablate.config import CONF_MODULE
    from llava_ablate.model import mini_lm

    tok = build_tiny_tokenizer(tmp_path / "tokenizers" / "tiny-qwen2", "qwen2")
    (tmp_path / "mini_classify").mkdir()
    (tmp_path / "mini_classify" / "classes.csv").write_text(
        "".join(f"{c.key},{c.name},{c.group}\n" for c in classes())
    )
    built = tmp_path / "mini_lm"
    config = AutoConfig.for_model("qwen2", vocab_size=len(tok), hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(built)
    (built / "build.json").write_text(json.dumps({"fingerprint": "f"}))
    monkeypatch.setattr(mini_lm, "generate_builtin_llm", lambda *a, **k: built)
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        names, vectors, fingerprint = mini_lm.name_vectors(tmp_path)
    assert names == [c.name for c in classes()] and vectors.shape == (30, 32)
    assert fingerprint == "f" and len({tuple(v.tolist()) for v in vectors}) == 30
