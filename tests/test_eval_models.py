"""Real models: letter tokens per chat template, the likelihood shortcut against a full forward,
the real SmolLM2 LLaVA end to end, the evaluate.py CLI under torchrun, a tiny CLIP baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import eval_fixtures as fx
import numpy as np
import pytest
import torch
from PIL import Image

from llava_ablate.base.chat_templates import processor_messages, render
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.models import MLLMChoiceModel, letter_token_ids
from llava_ablate.eval.questions import LETTERS, Question, build_question_set, mcq_prompt
from llava_ablate.eval.run import evaluate_dataset, item_maker
from llava_ablate.eval.scoring import PromptItem
from llava_ablate.eval_config import DatasetCfg, EvalCfg, QuestionsCfg, ScoringCfg

from conftest import ROOT, _free_port, build_tiny


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    return build_tiny(cache_dir, llm="smollm2_135m")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = fx.digits_folder(tmp_path_factory.mktemp("digits"), per_class=2)
    return load_dataset("digits", DatasetCfg(kind="image_folder", root=str(root)))


@pytest.mark.parametrize("llm", ["tiny_llama", "tiny_qwen2", "smollm2_135m"])
def test_letter_tokens_follow_the_chat_template(cache_dir, llm, smollm2):
    variant = smollm2 if llm == "smollm2_135m" else build_tiny(cache_dir, llm=llm)
    tok = variant.processor.tokenizer
    ids, suffix = letter_token_ids(variant.processor)
    assert [tok.decode([i]).strip() for i in ids] == list(LETTERS)
    prompt = render(variant.processor, processor_messages("Q", image=False), True)
    base = tok(prompt + suffix, add_special_tokens=False).input_ids
    if not suffix:  # natural mode: the letter is the first token the template's answer produces
        for letter, i in zip(LETTERS, ids, strict=True):
            full = render(variant.processor, processor_messages("Q", letter, image=False), False)
            full_ids = tok(full, add_special_tokens=False).input_ids
            assert full_ids[: len(base)] == base and full_ids[len(base)] == i
    else:  # bare mode: the template's whitespace is in the prompt, each letter one bare token
        assert suffix.isspace() and tok.decode(base[-1:]).isspace()
        assert all(
            tok(c, add_special_tokens=False).input_ids == [i]
            for c, i in zip(LETTERS, ids, strict=True)
        )
    # ChatML answers right after "assistant\n": no suffix there.
    if llm != "tiny_llama":
        assert suffix == ""


def test_likelihood_matches_a_full_forward(smollm2):
    model = MLLMChoiceModel(smollm2.model.eval(), smollm2.processor)
    qs = [
        Question("d/1", "1", "cat", ["dog", "cat", "bird"], "B"),
        Question(
            "d/2", "2", "a very long class name here", ["x", "a very long class name here"], "B"
        ),
    ]
    items = [
        PromptItem(
            q, Image.new("RGB", (40 + 9 * i, 30), (200, 10 * i, 10)), mcq_prompt(q, QuestionsCfg())
        )
        for i, q in enumerate(qs)
    ]
    batched = model.letter_scores(items)
    for i, it in enumerate(items):
        inputs = model._inputs([it], "right", model.answer_prefix)
        with torch.no_grad():
            logits = smollm2.model(**inputs).logits[0, -1]
        expected = torch.log_softmax(logits.float(), -1)[model.letter_ids].numpy()
        np.testing.assert_allclose(batched[i], expected, atol=2e-4)


@pytest.mark.parametrize("llm", ["tiny_llama", "tiny_qwen2", "smollm2_135m"])
@pytest.mark.parametrize("names_prompt", [None, "What is shown in this image?"])
def test_name_likelihood_matches_full_forwards(cache_dir, llm, names_prompt, smollm2):
    """The KV-cache shortcut scores each option's name exactly as a separate forward over
    prompt + answer would (vicuna's " name" and ChatML's "name" answers alike)."""
    variant = smollm2 if llm == "smollm2_135m" else build_tiny(cache_dir, llm=llm)
    variant.model.eval()
    answer = "{letter}. {option}" if names_prompt else "{option}"
    model = MLLMChoiceModel(
        variant.model, variant.processor, names_prompt=names_prompt, names_answer=answer
    )
    q = Question("d/1", "1", "ankle boot", ["cat", "ankle boot", "a very long class name"], "B")
    item = PromptItem(q, Image.new("RGB", (40, 30), (200, 10, 10)), mcq_prompt(q, QuestionsCfg()))
    got = model.name_scores([item, item])
    assert np.isinf(got[:, 3:]).all() and np.isfinite(got[:, :3]).all()
    np.testing.assert_array_equal(got[0], got[1])
    tok = variant.processor.tokenizer
    prompt_item = PromptItem(q, item.image, names_prompt or item.text)
    for k, option in enumerate(q.options):
        ids = model.answer_ids(answer.format(letter=LETTERS[k], option=option))
        full = render(
            variant.processor, processor_messages(prompt_item.text, tok.decode(ids)), False
        )
        assert tok.decode(ids).strip() in full  # the answer as the template writes it
        inputs = model._inputs([prompt_item], "right")
        n = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(variant.model(**inputs).logits[0].float(), -1)
        expected = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(ids))
        assert got[0, k] == pytest.approx(expected, abs=2e-3)


def test_name_likelihood_answer_ids_follow_the_template(cache_dir):
    llama = build_tiny(cache_dir, llm="tiny_llama")
    model = MLLMChoiceModel(llama.model.eval(), llama.processor)
    tok = llama.processor.tokenizer
    # vicuna_v1 writes "ASSISTANT: cat</s>": the scored answer is " cat", no end of turn.
    assert tok.decode(model.answer_ids("cat")) == " cat"


def test_smollm2_llava_end_to_end(smollm2, digits, tmp_path):
    ecfg = EvalCfg(
        scoring=ScoringCfg(
            scorers=["likelihood", "generate", "name_likelihood"], batch_size=4, max_new_tokens=4
        )
    )
    qs = build_question_set(digits, ecfg.questions)
    model = MLLMChoiceModel(smollm2.model.eval(), smollm2.processor, max_new_tokens=4)
    m = evaluate_dataset(
        model,
        digits,
        qs,
        ecfg,
        tmp_path,
        make_item=item_maker(digits, ecfg, smollm2.processor.image_processor),
        model_name="smollm2",
    )
    assert m["n_questions"] == 20 and m["num_options"] == 10
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 60
    lik = [p for p in preds if p["scorer"] == "likelihood"]
    assert all(p["pred"] in LETTERS[:10] and 0 < p["p_pred"] <= 1 for p in lik)
    acc = m["scorers"]["likelihood"]["accuracy"]
    assert acc["value"] == np.mean([p["correct"] for p in lik])
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    gen = [p for p in preds if p["scorer"] == "generate"]
    assert all(isinstance(p["raw"], str) for p in gen)
    assert 0 <= m["agreement"]["same_choice"] <= 1
    names = [p for p in preds if p["scorer"] == "name_likelihood"]
    assert len(names) == 20 and all(p["pred_class"] in digits.classnames for p in names)
    head = m["scorers"]["name_likelihood"]["accuracy"]["value"]
    assert head == np.mean([p["correct"] for p in names])


def _export_tiny(cache_dir, path):
    if not (path / "config.json").exists():
        v = build_tiny(cache_dir)
        v.model.save_pretrained(path)
        v.processor.save_pretrained(path)
    return path


def test_evaluate_cli_torchrun_matches_single_process(cache_dir, digits, tmp_path):
    export = _export_tiny(cache_dir, tmp_path / "tiny" / "export")
    root = digits.samples[0].image.rsplit("/", 2)[0]
    overrides = [
        f"model.path={export}",
        "eval/datasets=[image_folder]",
        f"eval.datasets.image_folder.root={root}",
        "eval.scoring.scorers=[likelihood,generate]",
        "eval.scoring.max_new_tokens=3",
        "eval.scoring.batch_size=3",
        f"eval.questions.dir={tmp_path / 'questions'}",
        "eval.stats.bootstrap=200",
        "model.dtype=fp32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(launcher, out):
        cmd = [*launcher, str(ROOT / "evaluate.py"), *overrides, f"out_dir={out}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads((out / "image_folder" / "metrics.json").read_text())

    two = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
        ],
        tmp_path / "two",
    )
    one = run([sys.executable], tmp_path / "one")
    assert one["scorers"] == two["scorers"]
    assert one["question_set"]["fingerprint"] == two["question_set"]["fingerprint"]
    assert one["image_aspect"] == "pad"  # model.image_aspect=auto: our llava export pads
    lines = (tmp_path / "two" / "image_folder" / "predictions.jsonl").read_text().splitlines()
    assert (
        len(lines) == 40
        and len({(json.loads(x)["qid"], json.loads(x)["scorer"]) for x in lines}) == 40
    )
    summary = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert summary["model"] == "tiny" and "image_folder" in summary


def _tiny_clip(cache_dir):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer(cache_dir / "tokenizers" / "tiny-vicuna_v1", "vicuna_v1")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tok,
    )
    return model, processor


def test_clip_baseline_on_a_tiny_clip(cache_dir, digits, tmp_path):
    from llava_ablate.eval.baselines import ZeroShotChoiceModel, load_templates

    model, processor = _tiny_clip(cache_dir)
    # CLIP's tokenizer appends its end token, where the text tower pools; the tiny one does not,
    # so the templates carry it.
    templates = ["a photo of a {}.</s>", "a drawing of a {}.</s>"]
    zs = ZeroShotChoiceModel(model, processor, templates).with_classes(digits.classnames)
    ecfg = EvalCfg(scoring=ScoringCfg(scorers=["likelihood", "all_classes"], batch_size=8))
    qs = build_question_set(digits, ecfg.questions)
    m = evaluate_dataset(
        zs,
        digits,
        qs,
        ecfg,
        tmp_path,
        make_item=item_maker(digits, ecfg, pad=False),
        scorers=["likelihood", "all_classes"],
    )
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    # Independent check with CLIPModel's own logits_per_image over the (mean-template) classes.
    with torch.no_grad():
        text = []
        for c in digits.classnames:
            enc = processor.tokenizer(
                [t.format(c) for t in templates], padding=True, return_tensors="pt"
            )
            f = torch.nn.functional.normalize(
                model.get_text_features(**enc).pooler_output
                if not torch.is_tensor(model.get_text_features(**enc))
                else model.get_text_features(**enc),
                dim=-1,
            )
            text.append(torch.nn.functional.normalize(f.mean(0), dim=-1))
        text = torch.stack(text)
    for q in qs.questions:
        image = digits.load_image(digits.by_id()[q.sample_id])
        pix = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pix)
        img = torch.nn.functional.normalize(
            out if torch.is_tensor(out) else out.pooler_output, dim=-1
        )
        sims = (img @ text.T)[0]
        best_all = digits.classnames[int(sims.argmax())]
        option_idx = [digits.classnames.index(o) for o in q.options]
        best_opt = q.options[int(sims[option_idx].argmax())]
        mine = {p["scorer"]: p for p in preds if p["qid"] == q.qid}
        assert mine["all_classes"]["pred_class"] == best_all
        assert mine["likelihood"]["pred_class"] == best_opt
    assert set(m["scorers"]) == {"likelihood", "all_classes"}
    assert (
        load_templates("openai80")[0] == "a bad photo of a {}."
        and len(load_templates("openai80")) == 80
    )


def test_hard_distractors_from_a_clip_text_tower(cache_dir, digits):
    from llava_ablate.eval.text_encoders import HFTextTower, TextEncoder

    model, processor = _tiny_clip(cache_dir)
    tower = HFTextTower(model, processor.tokenizer, template="a photo of a {}.</s>")
    emb = tower(digits.classnames)
    assert emb.shape[0] == 10 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    qs = build_question_set(
        digits,
        QuestionsCfg(num_options=4, distractors="hard"),
        encoder=TextEncoder("clip:tiny", tower),
    )
    assert qs.encoder == "clip:tiny"
    sim = emb @ emb.T
    for q in qs.questions:
        i = digits.classnames.index(q.label)
        nearest = {digits.classnames[j] for j in np.argsort(-sim[i])[1:4]}
        assert set(q.options) - {q.label} == nearest


def test_evaluate_multirun_records_one_flat_folder_per_job(cache_dir, digits, tmp_path):
    """`evaluate.py -m` over model paths (slashes and all): the sweep's records are one folder
    per job, named by its number, model and distractors -- never nested on an override's `/`."""
    model, processor = _tiny_clip(cache_dir)
    paths = [tmp_path / "zoo" / "a" / "clip", tmp_path / "zoo" / "b" / "clip_b"]
    for path in paths:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.</s>\n")
    root = digits.samples[0].image.rsplit("/", 2)[0]
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "model.type=clip",
           f"model.path={paths[0]},{paths[1]}", f"model.templates={templates}",
           "eval/datasets=[image_folder]", f"eval.datasets.image_folder.root={root}",
           "eval.scoring.scorers=[likelihood]", "eval.stats.bootstrap=100"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "results" / "multirun"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())  # beside Hydra's multirun.yaml
    assert [p.name for p in jobs] == ["0-clip-random", "1-clip_b-random"]
    for job in jobs:
        assert sorted(p.name for p in job.iterdir()) == ["evaluate.log", "hydra"]
    for tag in ("clip", "clip_b"):  # each model's results where a single run puts them
        assert (tmp_path / "results" / tag / "random" / "image_folder" / "metrics.json").exists()
