"""The evaluator on transformers' image-text-to-text families (tests/family_models.py): for each
family and scorer, with option rotations sharing a question's prefill, every score equals one
direct stock forward per prompt (fp32, 1e-4), the image features are computed once per question,
and a batch mixes image sizes (different token counts for the dynamic-resolution families)."""

from __future__ import annotations

import family_models as fm
import numpy as np
import pytest
import torch
from PIL import Image

from llava_ablate.base.chat_templates import processor_messages, render
from llava_ablate.eval.families import supported
from llava_ablate.eval.models import MLLMChoiceModel, load_mllm
from llava_ablate.eval.questions import LETTERS, Question, mcq_prompt
from llava_ablate.eval.scoring import PromptItem, score_units, units_for
from llava_ablate.eval_config import QuestionsCfg

NAMES = ["cat", "ankle boot", "a very long class name", "dog", "red bird"]
SIZES = [(56, 56), (112, 56), (56, 112)]  # 4, 8 and 8 (other shape) merged Qwen patches


@pytest.fixture(scope="module", params=sorted(fm.BUILDERS))
def family(request, cache_dir):
    model, processor = fm.BUILDERS[request.param](cache_dir)
    return request.param, model, processor


def _question(i: int) -> Question:
    options = NAMES[i:] + NAMES[:i]
    return Question(f"d/{i}", str(i), options[1], options, "B")


def _make(q: Question) -> PromptItem:
    i = int(q.sample_id)
    image = Image.new("RGB", SIZES[i % len(SIZES)], (60 * i % 256, 90, 200 - 40 * i))
    return PromptItem(q, image, mcq_prompt(q, QuestionsCfg()))


def _count_image_features(model, monkeypatch) -> list:
    """Every call of the model's own image encoder (what `get_image_features` runs)."""
    calls = []
    base = getattr(model, model.base_model_prefix)
    encode = base.get_image_features
    monkeypatch.setattr(
        base, "get_image_features", lambda *a, **k: calls.append(1) or encode(*a, **k)
    )
    return calls


@torch.no_grad()
def _stock(model, processor, cm, image, prompt: str, answer: list[int] | None = None):
    """Log-probs after `prompt` (+ each token of `answer`): one plain forward of the stock
    model on what the stock processor gives, nothing of ours in between."""
    enc = processor(images=[image], text=[prompt], return_tensors="pt",
                    add_special_tokens=cm.add_special_tokens)  # fmt: skip
    n = enc["input_ids"].shape[1]
    if answer:
        extra = torch.tensor([answer])
        for key, value in list(enc.items()):
            if value.shape == (1, n) and not torch.is_floating_point(value):
                fill = extra if key == "input_ids" else (
                    torch.ones_like(extra) if key == "attention_mask" else torch.zeros_like(extra)
                )  # fmt: skip
                enc[key] = torch.cat([value, fill.to(value.dtype)], dim=1)
    logp = torch.log_softmax(model(**enc).logits[0].float(), -1)
    return logp[n - 1 :]


def _references(cm, model, processor, item: PromptItem):
    prompt = render(processor, processor_messages(item.text), True)
    letters = _stock(model, processor, cm, item.image, prompt + cm.answer_prefix)[0]
    names = np.full(26, -np.inf)
    for k, option in enumerate(item.question.options):
        ids = cm.answer_ids(option)
        logp = _stock(model, processor, cm, item.image, prompt, ids)
        names[k] = sum(float(logp[j, t]) for j, t in enumerate(ids))
    return letters[cm.letter_ids].numpy(), names


def test_likelihood_scorers_equal_a_stock_forward_with_rotations(family, monkeypatch):
    name, model, processor = family
    cm = MLLMChoiceModel(model, processor)
    questions = [_question(i) for i in range(3)]
    units = units_for(questions, 2)  # eval.scoring.cyclic_permutations=2
    scorers = ["likelihood", "name_likelihood"]
    preds = [p for b in score_units(units, cm, scorers, _make, batch_size=len(units)) for p in b]
    items = [_make(u.question.rotated(u.shift)) for u in units]
    calls = _count_image_features(model, monkeypatch)
    fused = cm.choice_scores(items, scorers)  # what score_units called, all rows at once
    assert len(calls) == len(questions), f"{name}: image features {len(calls)}x for 3 questions"
    got = {(p.key, p.scorer): p.pred for p in preds}
    for row, (unit, item) in enumerate(zip(units, items, strict=True)):
        letters, names = _references(cm, model, processor, item)
        np.testing.assert_allclose(fused["likelihood"][row, :5], letters[:5], atol=1e-4)
        np.testing.assert_allclose(fused["name_likelihood"][row], names, atol=1e-4)
        assert got[(unit.key, "likelihood")] == LETTERS[int(np.argmax(letters[:5]))]
        assert got[(unit.key, "name_likelihood")] == LETTERS[int(np.argmax(names))]
    # The batched letter forward (no shared prefill) over images of different sizes.
    batch = [_make(q) for q in questions]
    calls.clear()
    letters = cm.letter_scores(batch)
    assert len(calls) == 1  # one image-encoder call for the whole batch
    for row, item in enumerate(batch):
        np.testing.assert_allclose(letters[row], _references(cm, model, processor, item)[0],
                                   atol=1e-4)  # fmt: skip


def test_name_likelihood_of_one_prompt_equals_a_stock_forward(family):
    """No rotations, one prompt: the prefill over one image's inputs (Qwen2-VL's flat patches
    once split as if batch-first)."""
    name, model, processor = family
    cm = MLLMChoiceModel(model, processor)
    item = _make(_question(1))
    got = cm.name_scores([item])[0]
    np.testing.assert_allclose(got, _references(cm, model, processor, item)[1], atol=1e-4)


def test_generate_equals_stock_generate(family):
    name, model, processor = family
    cm = MLLMChoiceModel(model, processor, max_new_tokens=4)
    items = [_make(_question(i)) for i in range(3)]  # three image sizes, left-padded together
    got = cm.generate(items)
    for item, text in zip(items, got, strict=True):
        prompt = render(processor, processor_messages(item.text), True)
        enc = processor(images=[item.image], text=[prompt], return_tensors="pt",
                        add_special_tokens=cm.add_special_tokens)  # fmt: skip
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        new = out[:, enc["input_ids"].shape[1] :]
        assert text == processor.batch_decode(new, skip_special_tokens=True)[0], name


def test_default_images_reach_each_family_as_its_makers_give_them(family, tmp_path):
    """`model.image_aspect=auto`, the default: a non-square image reaches the model as its family
    is evaluated -- padded to a square for LLaVA-1.5 (and our llava exports), as read for the
    dynamic-resolution and tiling families -- and both likelihood scorers, through evaluate.py's
    own item maker, equal one stock forward on that image."""
    from llava_ablate.data.images import mean_colour, pad_to_square
    from llava_ablate.eval.datasets import ClassificationDataset, Sample
    from llava_ablate.eval.run import image_aspect_of, item_maker
    from llava_ablate.eval_config import EvalCfg, EvaluateConfig, ModelCfg

    name, model, processor = family
    model.config.save_pretrained(tmp_path)  # what AutoConfig reads of model.path: the family
    cfg = EvaluateConfig(model=ModelCfg(path=str(tmp_path)), out_dir=str(tmp_path / "out"))
    assert cfg.model.image_aspect == "auto"
    aspect = image_aspect_of(cfg, processor.image_processor)
    assert aspect == ("pad" if name == "llava" else "native"), name
    image = Image.new("RGB", (112, 56))
    image.putdata([(x * 2, y * 4, (x + y) % 256) for y in range(56) for x in range(112)])
    image.save(tmp_path / "wide.png")
    q = _question(2)
    dataset = ClassificationDataset(
        "d", NAMES, [Sample(q.sample_id, 0, str(tmp_path / "wide.png"))]
    )
    item = item_maker(dataset, EvalCfg(), processor.image_processor, aspect == "pad")(q)
    given = (
        pad_to_square(image, mean_colour(processor.image_processor)) if name == "llava" else image
    )
    assert item.image.size == given.size and list(item.image.getdata()) == list(given.getdata())
    cm = MLLMChoiceModel(model, processor)
    fused = cm.choice_scores([item], ["likelihood", "name_likelihood"])
    letters, names = _references(cm, model, processor, PromptItem(q, given, item.text))
    np.testing.assert_allclose(fused["likelihood"][0, :5], letters[:5], atol=1e-4)
    np.testing.assert_allclose(fused["name_likelihood"][0], names, atol=1e-4)


def test_an_unsupported_family_fails_before_loading(tmp_path):
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'paligemma'.*supported: .*qwen2_vl") as err:
        load_mllm(str(tmp_path), torch.float32, torch.device("cpu"))
    assert str(tmp_path) in str(err.value)
    assert set(fm.BUILDERS) == set(supported())  # every supported family is in the matrix
