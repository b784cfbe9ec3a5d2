"""Scoring through the real code path: oracle and random ChoiceModels over real images, the
answer parser, resume after a crash, and the letter tokens of real chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import eval_fixtures as fx
import numpy as np
import pytest
from scipy import stats

from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.parse import parse_choice
from llava_ablate.eval.questions import LETTERS, build_question_set
from llava_ablate.eval.run import evaluate_dataset, item_maker
from llava_ablate.eval_config import DatasetCfg, EvalCfg, QuestionsCfg, ScoringCfg


class OracleModel:
    """Always prefers the true letter; generates it in a different surface form per question."""

    scorers = ("likelihood", "generate")
    forms = ("{a}", "({a})", "{a}.", "Answer: {a}", "The answer is {a}.", "{name}")

    def __init__(self):
        self.seen_images = 0

    def letter_scores(self, items):
        out = np.zeros((len(items), 26), dtype=np.float32)
        for i, it in enumerate(items):
            assert it.image.mode == "RGB" and "Answer with the option's letter" in it.text
            out[i, it.question.answer_index] = 5.0
        self.seen_images += len(items)
        return out

    def generate(self, items):
        return [
            self.forms[i % len(self.forms)].format(
                a=it.question.answer, name=it.question.label.upper()
            )
            for i, it in enumerate(items)
        ]


class RandomModel:
    scorers = ("likelihood", "generate")

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def letter_scores(self, items):
        return self.rng.normal(size=(len(items), 26)).astype(np.float32)

    def generate(self, items):
        # Half valid letters, half text that names no option.
        return [
            LETTERS[self.rng.integers(len(it.question.options))]
            if self.rng.random() < 0.5
            else "I cannot tell."
            for it in items
        ]


class Crash(RuntimeError):
    pass


class CrashingModel(OracleModel):
    def __init__(self, after_batches):
        super().__init__()
        self.left = after_batches

    def letter_scores(self, items):
        if self.left == 0:
            raise Crash("simulated crash")
        self.left -= 1
        return super().letter_scores(items)


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    """30 classes x 20 real image files (solid colours), read through the image_folder reader."""
    root = fx.class_folders(tmp_path_factory.mktemp("folder30"), 30, 20)
    return load_dataset("folder30", DatasetCfg(kind="image_folder", root=str(root)))


def _run(model, ds, out, scorers=("likelihood",), cyclic=0, qcfg=None):
    ecfg = EvalCfg(
        questions=qcfg or QuestionsCfg(),
        scoring=ScoringCfg(scorers=list(scorers), batch_size=16, cyclic_permutations=cyclic),
    )
    qs = build_question_set(ds, ecfg.questions)
    return evaluate_dataset(
        model, ds, qs, ecfg, out, make_item=item_maker(ds, ecfg), scorers=list(scorers)
    )


def test_oracle_scores_100_percent_with_both_scorers(many_classes, tmp_path):
    model = OracleModel()
    m = _run(model, many_classes, tmp_path, scorers=("likelihood", "generate"), cyclic=4)
    assert model.seen_images == 600 * 4
    for s in ("likelihood", "generate"):
        assert m["scorers"][s]["accuracy"]["value"] == 1.0
        assert m["scorers"][s]["unparsed"] == 0
        assert m["scorers"][s]["cyclic"]["consistency"] == 1.0
    assert m["agreement"] == {"n": 600, "same_choice": 1.0, "same_correctness": 1.0}
    positions = m["scorers"]["likelihood"]["accuracy_by_answer_position"]
    assert set(positions) == set(LETTERS) and all(v["accuracy"] == 1 for v in positions.values())
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows[0].startswith("class_name,n,hard,accuracy") and len(rows) == 31
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 600 * 4 * 2


def test_random_model_scores_about_one_in_26(many_classes, tmp_path):
    m = _run(RandomModel(0), many_classes, tmp_path, scorers=("likelihood", "generate"))
    n, p = 600, 1 / 26
    lo, hi = stats.binom.interval(0.999, n, p)  # 99.9% of random models land in here
    hits = m["scorers"]["likelihood"]["accuracy"]["value"] * n
    assert lo <= hits <= hi, (hits, lo, hi)
    gen = m["scorers"]["generate"]
    assert 0.4 < gen["unparsed_rate"] < 0.6  # "I cannot tell." is recorded and counted wrong
    glo, ghi = stats.binom.interval(0.999, n, p / 2)
    assert glo <= gen["accuracy"]["value"] * n <= ghi


def test_resume_after_crash_skips_finished_questions(many_classes, tmp_path):
    ds = many_classes
    reference = _run(OracleModel(), ds, tmp_path / "clean")
    with pytest.raises(Crash):
        _run(CrashingModel(after_batches=10), ds, tmp_path / "crashed")
    partial = (tmp_path / "crashed" / "predictions.rank0.jsonl").read_text().splitlines()
    assert len(partial) == 160
    # A torn last line, as a kill mid-write leaves it.
    with open(tmp_path / "crashed" / "predictions.rank0.jsonl", "a") as fh:
        fh.write('{"qid": "folder30/cl')
    resumed_model = OracleModel()
    resumed = _run(resumed_model, ds, tmp_path / "crashed")
    assert resumed_model.seen_images == 600 - 160
    lines = (tmp_path / "crashed" / "predictions.jsonl").read_text().splitlines()
    keys = [json.loads(x)["qid"] for x in lines]
    assert len(keys) == len(set(keys)) == 600
    assert not list((tmp_path / "crashed").glob("predictions.rank*.jsonl"))
    assert resumed["scorers"] == reference["scorers"]
    # A finished run re-run scores nothing.
    again = OracleModel()
    _run(again, ds, tmp_path / "crashed")
    assert again.seen_images == 0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B. dog", "B"),
        ("B) dog", "B"),
        ("Answer: C", "C"),
        ("The answer is C.", "C"),
        ("the correct option is (A)", "A"),
        ("**B**", "B"),
        ("  b", None),
        ("dog", "B"),
        ("It is a dog.", "B"),
        ("A dog", "B"),
        ("A", "A"),
        ("A cat", "A"),
        ("A. cat", "A"),
        ("tabby cat", "D"),
        ("a cat or a dog", None),
        ("I am not sure.", None),
        ("Z", None),
        ("", None),
        ("(A) or (B)", None),
    ],
)
def test_parser(text, expected):
    assert parse_choice(text, ["cat", "dog", "bird", "tabby cat"]) == expected


def test_unparsed_generation_is_recorded_and_wrong(tmp_path, many_classes):
    class Mumbler(OracleModel):
        def generate(self, items):
            return ["hmm"] * len(items)

    m = _run(Mumbler(), many_classes, tmp_path, scorers=("generate",))
    assert m["scorers"]["generate"]["accuracy"]["value"] == 0.0
    assert m["scorers"]["generate"]["unparsed"] == 600
    line = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert line["raw"] == "hmm" and line["pred"] is None and line["correct"] is False


def test_digits_fixture_is_real_images(tmp_path):
    root = fx.digits_folder(tmp_path, per_class=1)
    ds = load_dataset("digits", DatasetCfg(kind="image_folder", root=str(root)))
    arr = np.asarray(ds.load_image(ds.samples[0]))
    assert arr.std() > 10  # not a blank image
    assert Path(ds.samples[0].image).exists()
