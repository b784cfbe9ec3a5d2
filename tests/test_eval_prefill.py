"""Shared prefills change no score: `score_units` with a question's rotations and both likelihood
scorers (one forward over the image + the text before the options, the differing tails batched
on copies of its KV cache, the name answers on the prompt's cache) against the previous
computation -- one full forward per prompt and scorer, and one per name answer.

Not bitwise: splitting a forward at another token changes the matmul shapes and so the order of
float additions; in fp32 that moves a log-probability by ~1e-6. The tolerance (1e-4) is two
orders above that and two below any difference between options that decides a choice; the
chosen letters must be identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llava_ablate.eval.models import MLLMChoiceModel
from llava_ablate.eval.questions import LETTERS, Question, mcq_prompt
from llava_ablate.eval.scoring import PromptItem, score_units, units_for
from llava_ablate.eval_config import QuestionsCfg

from conftest import build_tiny

NAMES = [f"class {'x' * (i % 7)} number {i}" for i in range(26)]


def _question(i: int) -> Question:
    options = NAMES[i:] + NAMES[:i]
    return Question(f"d/{i}", str(i), options[i % 26], options, LETTERS[i % 26])


def _make(q: Question) -> PromptItem:
    seed = int(q.sample_id)  # every rotation of a question reads the same image
    colour = (40 * seed % 256, 90, 200 - 30 * seed % 200)
    return PromptItem(q, Image.new("RGB", (40, 30 + seed), colour), mcq_prompt(q, QuestionsCfg()))


@torch.no_grad()
def _previous(model: MLLMChoiceModel, item: PromptItem) -> tuple[np.ndarray, np.ndarray]:
    """(letter log-probs, name scores) with one full forward per prompt and per name answer."""
    inputs = model._inputs([item], "right", model.answer_prefix)
    logits = model.model(**inputs).logits[0, -1]
    letters = torch.log_softmax(logits.float(), -1)[model.letter_ids].numpy()
    names_item = PromptItem(item.question, item.image, model.names_prompt or item.text)
    base = model._inputs([names_item], "right")
    n = base["input_ids"].shape[1]
    names = np.full(26, -np.inf)
    for k, option in enumerate(item.question.options):
        ids = model.answer_ids(model.names_answer.format(option=option, letter=LETTERS[k]))
        full = torch.cat([base["input_ids"], torch.tensor([ids])], dim=1)
        logp = torch.log_softmax(
            model.model(
                input_ids=full,
                attention_mask=torch.ones_like(full),
                pixel_values=base["pixel_values"],
            )
            .logits[0]
            .float(),
            -1,
        )
        names[k] = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(ids))
    return letters, names


@pytest.mark.parametrize("llm", ["tiny_llama", "tiny_qwen2"])  # vicuna_v1 and ChatML
@pytest.mark.parametrize("names_prompt", [None, "What is shown in this image?"])
def test_shared_prefills_change_no_score(cache_dir, llm, names_prompt):
    variant = build_tiny(cache_dir, llm=llm)
    variant.model.eval()
    model = MLLMChoiceModel(variant.model, variant.processor, names_prompt=names_prompt)
    tower_runs = []
    variant.model.model.vision_tower.register_forward_hook(lambda *_: tower_runs.append(1))
    questions = [_question(i) for i in range(3)]
    units = units_for(questions, 3)  # three rotations each
    scorers = ["likelihood", "name_likelihood"]
    preds = [p for b in score_units(units, model, scorers, _make, batch_size=9) for p in b]
    # One image forward per question for both scorers and all rotations (before: 3 x 2 x 26).
    assert len(tower_runs) == len(questions)
    got = {(p.key, p.scorer): p.pred for p in preds}
    items = [_make(u.question.rotated(u.shift)) for u in units]
    fused = model.choice_scores(items, scorers)  # what score_units called, all rows at once
    for row, (unit, item) in enumerate(zip(units, items, strict=True)):
        letters, names = _previous(model, item)
        np.testing.assert_allclose(fused["likelihood"][row], letters, atol=1e-4)
        np.testing.assert_allclose(fused["name_likelihood"][row], names, atol=1e-4)
        assert got[(unit.key, "likelihood")] == LETTERS[int(np.argmax(letters))]
        assert got[(unit.key, "name_likelihood")] == LETTERS[int(np.argmax(names))]
