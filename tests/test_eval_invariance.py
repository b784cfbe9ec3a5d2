"""Scores do not depend on how questions are batched (eval/invariance.py): for every supported
family (tests/family_models.py), the likelihood and name-likelihood scores of the same items
are equal (fp32, 1e-4) whether scored all at once, one at a time in reverse order, or in
batches of 2 with other companions -- with rotations of one question sometimes sharing a batch
(the shared-prefill path) and sometimes not. A control scorer that normalises over its batch,
as a careless harness might, fails the same check. Two core families (our llava exports and
Qwen2-VL's multimodal RoPE) run in the default suite, the other nine are marked slow."""

from __future__ import annotations

import family_models as fm
import pytest
from PIL import Image

from llava_ablate.eval.invariance import TOLERANCE, batch_deviation, batchings
from llava_ablate.eval.models import MLLMChoiceModel
from llava_ablate.eval.questions import Question, mcq_prompt
from llava_ablate.eval.scoring import PromptItem, units_for
from llava_ablate.eval_config import QuestionsCfg

NAMES = ["cat", "ankle boot", "a very long class name", "dog", "red bird"]
SIZES = [(56, 56), (112, 56), (56, 112)]  # different image-token counts where the family allows
CORE = {"llava", "qwen2_vl"}


def _items() -> list[PromptItem]:
    """3 questions (3 image sizes), each in 2 rotations: 6 items."""
    questions = []
    for i in range(3):
        options = NAMES[i:] + NAMES[:i]
        questions.append(Question(f"d/{i}", str(i), options[1], options, "B"))
    items = []
    for u in units_for(questions, 2):
        q = u.question.rotated(u.shift)
        i = int(q.sample_id)
        image = Image.new("RGB", SIZES[i % len(SIZES)], (60 * i % 256, 90, 200 - 40 * i))
        items.append(PromptItem(q, image, mcq_prompt(q, QuestionsCfg())))
    return items


class BatchNormalised:
    """The control: letter scores centred on the batch's mean (a batch-dependent scorer)."""

    scorers = ("likelihood",)

    def __init__(self, inner):
        self.inner = inner

    def letter_scores(self, items):
        scores = self.inner.letter_scores(items)
        return scores - scores.mean(axis=0, keepdims=True)


def assert_batch_invariant(model, scorers) -> dict:
    result = batch_deviation(model, _items(), scorers, batch_size=2, seed=0)
    assert result["max_abs_diff"] <= TOLERANCE, result["by_batching"]
    return result


def test_batchings_cover_size_companions_and_order():
    ways = batchings(5, 2, seed=0)
    assert all(sorted(i for b in w for i in b) == list(range(5)) for w in ways.values())
    assert ways["one at a time, reversed"][0] == [4]
    assert ways["shuffled batches of 2"] != ways["batches of 2"]


@pytest.mark.parametrize(
    "name",
    [n if n in CORE else pytest.param(n, marks=pytest.mark.slow) for n in sorted(fm.BUILDERS)],
)
def test_scores_do_not_depend_on_the_batching(name, cache_dir):
    model, processor = fm.BUILDERS[name](cache_dir)
    cm = MLLMChoiceModel(model, processor)
    result = assert_batch_invariant(cm, ["likelihood", "name_likelihood"])
    assert len(result["by_batching"]) == 3 and result["items"] == 6
    # The control on the same model: the check catches a batch-dependent scorer.
    with pytest.raises(AssertionError):
        assert_batch_invariant(BatchNormalised(cm), ["likelihood"])
