"""Score multiple-choice questions with a model behind a narrow interface.

`ChoiceModel` is the only thing that touches a network: `letter_scores` (the log-probability
of each letter as the next token), `name_scores` (the summed log-probability of each option's
class name as the answer: VLMClassifier's "probabilistic inference", on the same 26 options) and
`generate` (free text). Everything else here — which
letter wins, parsing, per-position bookkeeping, cyclic permutations — is plain code shared by
every model, our MLLMs, public ones and the CLIP/SigLIP baselines alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from llava_ablate.base.mcq import LETTERS
from llava_ablate.eval.parse import parse_choice
from llava_ablate.eval.questions import Question


@dataclass
class Skip:
    """A question left unscored because its image could not be read."""

    qid: str
    reason: str  # missing_image | unreadable_image | truncated_image | corrupt_image | ...
    image: str
    detail: str


@dataclass
class PromptItem:
    question: Question  # possibly rotated
    image: Image.Image
    text: str  # the MCQ text that follows the image
    skip: Skip | None = None  # set: `image` is a stand-in and the prediction is dropped


class ChoiceModel(Protocol):
    scorers: tuple[str, ...]  # which of "likelihood", "name_likelihood", "generate" it supports

    def letter_scores(self, items: list[PromptItem]) -> np.ndarray:
        """[len(items), 26] scores for the letters A..Z (higher = preferred)."""
        ...

    def name_scores(self, items: list[PromptItem]) -> np.ndarray:
        """[len(items), 26] log P(option's class name | image, prompt) per option (MLLMs)."""
        ...

    def generate(self, items: list[PromptItem]) -> list[str]: ...

    # Also, where supported: `classify_all(items) -> list[str]` (scorer all_classes: the best
    # class over every class) and `open_answers(items) -> [(text, class or None)]` (scorer
    # open: a free answer and the class it names), after `with_classes(classnames)`.


@dataclass(frozen=True)
class Unit:
    """One forward's worth of work: a question, possibly with its options rotated."""

    question: Question
    shift: int = 0

    @property
    def key(self) -> str:
        return f"{self.question.qid}@{self.shift}"


@dataclass
class Prediction:
    qid: str
    scorer: str  # likelihood | name_likelihood | generate | all_classes | open
    shift: int  # cyclic rotation of the options (0 = as frozen)
    label: str
    answer: str  # the true letter in this rotation
    pred: str | None  # the chosen letter; None = generated text named no option
    pred_class: str | None
    correct: bool
    raw: str | None = None  # generate, open: the text; likelihoods: None
    p_pred: float | None = None  # likelihoods: softmax over the k options of the chosen one

    @property
    def key(self) -> str:
        return f"{self.qid}@{self.shift}"


def cyclic_shifts(k: int, n: int) -> list[int]:
    """n rotations spread evenly over k options (n<=1: only the frozen order)."""
    if n <= 1:
        return [0]
    return sorted({round(i * k / n) % k for i in range(n)})


def units_for(questions: Iterable[Question], n_permutations: int) -> list[Unit]:
    return [Unit(q, s) for q in questions for s in cyclic_shifts(len(q.options), n_permutations)]


def predictions_from_scores(
    units: list[Unit], scores: np.ndarray, scorer: str = "likelihood"
) -> list[Prediction]:
    out = []
    for unit, row in zip(units, scores, strict=True):
        q = unit.question.rotated(unit.shift)
        k = len(q.options)
        valid = np.asarray(row[:k], dtype=np.float64)
        best = int(np.argmax(valid))  # ties go to the earliest letter, deterministically
        probs = np.exp(valid - valid.max())
        probs /= probs.sum()
        out.append(
            Prediction(
                q.qid,
                scorer,
                unit.shift,
                q.label,
                q.answer,
                LETTERS[best],
                q.options[best],
                best == q.answer_index,
                None,
                round(float(probs[best]), 6),
            )
        )
    return out


def predictions_from_text(units: list[Unit], texts: list[str]) -> list[Prediction]:
    out = []
    for unit, text in zip(units, texts, strict=True):
        q = unit.question.rotated(unit.shift)
        letter = parse_choice(text, q.options)
        pred_class = q.options[LETTERS.index(letter)] if letter else None
        out.append(
            Prediction(
                q.qid,
                "generate",
                unit.shift,
                q.label,
                q.answer,
                letter,
                pred_class,
                letter == q.answer,
                text,
            )
        )
    return out


def predictions_from_classes(
    units: list[Unit],
    classes: list[str | None],
    scorer: str = "all_classes",
    texts: list[str] | None = None,
) -> list[Prediction]:
    """Open choice over every class of the dataset (no options): right iff the class matches.
    `open`: the class a free answer named (None: none), the answer kept in `raw`."""
    out = []
    for i, (unit, name) in enumerate(zip(units, classes, strict=True)):
        q = unit.question.rotated(unit.shift)
        letter = q.answer if name == q.label else None
        raw = texts[i] if texts is not None else None
        out.append(
            Prediction(
                q.qid, scorer, unit.shift, q.label, q.answer, letter, name, name == q.label, raw
            )  # fmt: skip
        )
    return out


def by_length(units: list[Unit]) -> list[Unit]:
    """Units ordered by their options' text length (a question's rotations stay together):
    batches of similar prompts pad little. Stable, so every rank orders its units alike."""
    size = {u.question.qid: sum(map(len, u.question.options)) for u in units}
    first = {}
    for i, u in enumerate(units):
        first.setdefault(u.question.qid, i)
    return sorted(units, key=lambda u: (size[u.question.qid], first[u.question.qid]))


def likelihoods(model: ChoiceModel, items: list[PromptItem], scorers: list[str]) -> dict:
    """{scorer: [len(items), 26] scores} of the likelihood scorers asked for.

    A model with `choice_scores` shares prefills (one per distinct prompt; a question's
    rotations share the image): used when that saves work -- both scorers asked for, or a
    question scored in several rotations. Otherwise the letters go through one batched forward.
    """
    wanted = [s for s in ("likelihood", "name_likelihood") if s in scorers]
    rotated = len({it.question.qid for it in items}) < len(items)
    if hasattr(model, "choice_scores") and ("name_likelihood" in wanted or rotated):
        return model.choice_scores(items, wanted)
    out = {}
    if "likelihood" in wanted:
        out["likelihood"] = model.letter_scores(items)
    if "name_likelihood" in wanted:
        out["name_likelihood"] = model.name_scores(items)
    return out


def score_units(
    units: list[Unit],
    model: ChoiceModel,
    scorers: list[str],
    make_item: Callable[[Question], PromptItem],
    batch_size: int,
    skips: list[Skip] | None = None,
) -> Iterator[list[Prediction]]:
    """Yield the predictions of each batch (every scorer), so callers can persist as they go.

    Items whose image could not be read (`PromptItem.skip`) still go through the model on a
    stand-in image, so every rank runs the same forwards (ZeRO-3); their predictions are dropped
    and their Skip appended to `skips`. Without a `skips` list an unreadable image is an error.
    """
    for unsupported in set(scorers) - set(model.scorers):
        raise ValueError(f"this model has no {unsupported!r} scorer (it has {model.scorers})")
    units = by_length(units)
    for start in range(0, len(units), batch_size):
        batch = units[start : start + batch_size]
        items = [make_item(u.question.rotated(u.shift)) for u in batch]
        skipped = {u.key: it.skip for u, it in zip(batch, items, strict=True) if it.skip}
        if skipped and skips is None:
            first = next(iter(skipped.values()))
            raise ValueError(f"cannot read the image of question {first.qid}: {first.image} "
                             f"({first.reason}: {first.detail})")  # fmt: skip
        preds: list[Prediction] = []
        for scorer, scores in likelihoods(model, items, scorers).items():
            preds += predictions_from_scores(batch, scores, scorer)
        if "generate" in scorers:
            preds += predictions_from_text(batch, model.generate(items))
        if "all_classes" in scorers:
            preds += predictions_from_classes(batch, model.classify_all(items))
        if "open" in scorers:
            texts, named = zip(*model.open_answers(items), strict=True)
            preds += predictions_from_classes(batch, list(named), "open", list(texts))
        if skipped:
            preds = [p for p in preds if p.key not in skipped]
            skips.extend(skipped.values())  # type: ignore[union-attr]
        yield preds
