"""The protocol card (eval=protocol): each axis on its own -- nested option counts, image-level
distractors, wordings, rotations, open answers -- checked against a scripted model whose every
answer is known in advance, and the whole card end to end on a tiny Qwen2-VL."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from functools import partial

import eval_fixtures as fx
import numpy as np
import pytest
import torch

from llava_ablate.base.config import ConfigError
from llava_ablate.base.distributed import DistInfo
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.open_answer import OpenAnswerMatcher, nearest_classes, normalise
from llava_ablate.eval.protocol import planned_arms
from llava_ablate.eval.protocol_run import protocol_sweep, sweep_arms
from llava_ablate.eval.questions import (
    LETTERS,
    build_question_set,
    nested_question_set,
    question_set_path,
)
from llava_ablate.eval.run import evaluate_dataset, item_maker
from llava_ablate.eval.text_encoders import build_text_encoder
from llava_ablate.eval_config import (
    DatasetCfg,
    EvalCfg,
    ProtocolCfg,
    QuestionsCfg,
    ScoringCfg,
    WordingCfg,
    validate_eval,
)

KNOWN = 15  # the scripted model knows classes 00..14 of 30


@pytest.fixture(scope="module")
def folder30(tmp_path_factory):
    """30 classes x 4 real image files, read through the image_folder reader."""
    root = fx.class_folders(tmp_path_factory.mktemp("folder30"), 30, 4)
    return load_dataset("folder30", DatasetCfg(kind="image_folder", root=str(root)))


def test_nested_option_counts_keep_the_true_class_and_the_first_distractors(folder30):
    base = build_question_set(folder30, QuestionsCfg())
    assert base.num_options == 26
    for k in (2, 4, 10):
        nested = nested_question_set(base, k)
        assert nested.num_options == k and nested.nested_in == base.fingerprint()
        for q, b in zip(nested.questions, base.questions, strict=True):
            assert q.qid == b.qid and q.options[q.answer_index] == q.label == b.label
            first = [o for o in b.options if o != b.label][: k - 1]
            assert [o for o in q.options if o != q.label] == first
        counts = Counter(q.answer for q in nested.questions)  # balanced over the k letters
        assert set(counts) == set(LETTERS[:k]) and max(counts.values()) - min(counts.values()) <= 1
        assert nested.fingerprint() == nested_question_set(base, k).fingerprint()  # seeded
    assert nested_question_set(base, 26) is base


def test_image_distractors_are_the_classes_the_image_tower_ranks_first(cache_dir, tmp_path):
    from test_eval_models import _tiny_clip

    from llava_ablate.eval.image_confusions import image_rankings

    model, processor = _tiny_clip(cache_dir)
    # CLIP's tokenizer ends every text with its end token, where the text tower pools.
    processor.tokenizer.add_eos_token = True
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    digits = load_dataset(
        "digits",
        DatasetCfg(kind="image_folder", root=str(fx.digits_folder(tmp_path / "d", per_class=2))),
    )
    qcfg = QuestionsCfg(num_options=4, distractors="image", image_encoder=f"clip:{tmp_path}/clip")
    qs = build_question_set(digits, qcfg, rank_images=image_rankings)
    assert qs.strategy == "image" and qs.encoder == qcfg.image_encoder
    # Independently: CLIPModel's own features, "a photo of a {}." per class.
    with torch.no_grad():
        enc = processor.tokenizer([f"a photo of a {c}." for c in digits.classnames],
                                  padding=True, return_tensors="pt")  # fmt: skip
        text = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    picked_by_image = 0
    for q in qs.questions:
        image = digits.load_image(digits.by_id()[q.sample_id])
        pix = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            img = torch.nn.functional.normalize(
                model.get_image_features(pixel_values=pix).pooler_output, dim=-1
            )
        ranked = [digits.classnames[i] for i in torch.argsort(-(img @ text.T)[0]).tolist()]
        top = [c for c in ranked if c != q.label][:3]
        assert set(q.options) - {q.label} == set(top)
        picked_by_image += top != [c for c in digits.classnames if c != q.label][:3]
    assert picked_by_image  # not simply the first classes
    other = replace(qcfg, image_encoder="clip:elsewhere")
    assert question_set_path(tmp_path, "d", qcfg, {}) != question_set_path(tmp_path, "d", other, {})


def test_open_answers_match_names_and_synonyms_by_normalised_words():
    m = OpenAnswerMatcher(["tiger shark", "shark", "crane", "ankle boot"], {"crane": ["Kranich"]})
    assert normalise("  The Ankle-Boot!  ") == "ankle boot"
    assert m.match("It is a Tiger Shark.") == "tiger shark"  # the longest name wins
    assert m.match("a shark, I think") == "shark"
    assert m.match("ein KRANICH") == "crane"  # a synonym
    assert m.match("sharks") is None  # whole words only
    assert m.match("a boot") is None
    assert OpenAnswerMatcher(["cat", "dog"]).match("cat or dog") is None  # two at one length
    near = nearest_classes(["tiger sharc", "ankel boot"], ["tiger shark", "ankle boot"],
                           build_text_encoder("tfidf").embed)  # fmt: skip
    assert near == ["tiger shark", "ankle boot"]


class ScriptedModel:
    """Knows classes 00..14: picks the true option (and names the class); otherwise picks the
    option at letter A -- or B when asked with the second wording -- and answers "no idea"."""

    scorers = ("likelihood", "all_classes", "open")

    def __init__(self):
        self.classnames: list[str] = []

    def with_classes(self, classnames):
        self.classnames, self.matcher = list(classnames), OpenAnswerMatcher(classnames)
        return self

    def knows(self, label: str) -> bool:
        return int(label.split()[-1]) < KNOWN

    def letter_scores(self, items):
        out = np.zeros((len(items), 26))
        for row, it in enumerate(items):
            q = it.question
            guess = 1 if "letter only" in it.text else 0
            out[row, q.answer_index if self.knows(q.label) else guess] = 1.0
        return out

    def classify_all(self, items):
        return [it.question.label if self.knows(it.question.label) else self.classnames[0]
                for it in items]  # fmt: skip

    def open_answers(self, items):
        texts = [f"It is a {it.question.label.upper()}." if self.knows(it.question.label)
                 else "no idea" for it in items]  # fmt: skip
        return [(t, self.matcher.match(t)) for t in texts]

    def generate(self, items):
        raise NotImplementedError


def _expected(qset, guess: str = "A") -> float:
    return float(np.mean([int(q.label.split()[-1]) < KNOWN or q.answer == guess
                          for q in qset.questions]))  # fmt: skip


def test_each_axis_of_the_card_on_a_scripted_model(folder30, tmp_path):
    wordings = [WordingCfg("What is this?", "Answer with a letter."),
                WordingCfg("Which is it?", "Reply with the letter only.")]  # fmt: skip
    ecfg = EvalCfg(
        questions=QuestionsCfg(dir=str(tmp_path / "q")),
        scoring=ScoringCfg(batch_size=7),
        protocol=ProtocolCfg(
            enabled=True,
            num_options=[2, 4, 26],
            difficulties=["random", "hard"],
            wordings=wordings,
            rotations=4,
            max_questions=80,
        ),  # fmt: skip
    )
    validate_eval(ecfg)
    model = ScriptedModel().with_classes(folder30.classnames)
    base = build_question_set(folder30, ecfg.questions)
    hard = build_question_set(folder30, replace(ecfg.questions, distractors="hard"))
    arms = sweep_arms(base, {"random": base, "hard": hard}, ecfg, model.scorers)
    assert len(arms[0].qset.questions) == 80  # a seeded sample, the same in every arm
    assert all({q.qid for q in a.qset.questions} == {q.qid for q in arms[0].qset.questions}
               for a in arms)  # fmt: skip
    card = protocol_sweep(
        model, folder30, arms, ecfg, tmp_path / "out",
        evaluate=partial(evaluate_dataset, world=DistInfo()),
        make_item_for=partial(item_maker, folder30), world=DistInfo(), finished=False,
    )  # fmt: skip
    by = {a.name: a for a in arms}
    known = float(np.mean([int(q.label.split()[-1]) < KNOWN for q in arms[0].qset.questions]))
    # Options: the accuracy at each k is the known classes plus the unknown ones answered A.
    options = {row["k"]: row for row in card["options"]}
    for k in ("2", "4", "26"):
        assert options[k]["accuracy"]["value"] == pytest.approx(_expected(by[f"options-{k}"].qset))
        assert options[k]["chance"] == pytest.approx(1 / int(k))
    assert options["2"]["accuracy"]["value"] > options["26"]["accuracy"]["value"]
    assert options["2"]["paired"]["delta"] == pytest.approx(
        options["2"]["accuracy"]["value"] - options["26"]["accuracy"]["value"]
    )
    assert options["all"]["accuracy"]["value"] == pytest.approx(known)
    assert options["all"]["options"] == 30 and options["all"]["scorer"] == "all_classes"
    # Difficulty: one row per strategy, each on its own frozen options.
    rows = {row["distractors"]: row for row in card["difficulty"]}
    assert rows["hard"]["accuracy"]["value"] == pytest.approx(_expected(by["difficulty-hard"].qset))
    assert rows["hard"]["encoder"].startswith("tfidf") and rows["hard"]["vs"] == "random"
    # Wording: the second phrasing makes the model guess B instead of A.
    acc = [p["accuracy"]["value"] for p in card["wording"]["phrasings"]]
    assert acc == pytest.approx([_expected(base_ := by["wording-0"].qset), _expected(base_, "B")])
    spread = card["wording"]["spread"]
    assert spread["range"] == pytest.approx(max(acc) - min(acc)) and spread["min"] == min(acc)
    # Order: the known classes are right in every rotation, the guesses change class.
    order = card["order"]
    assert order["rotations"] == 4 and order["consistency"] == pytest.approx(known)
    assert order["all_correct_accuracy"]["value"] == pytest.approx(known)
    # Open: a known class is named (in upper case, with an article), the rest unmatched.
    assert card["open"]["accuracy"]["value"] == pytest.approx(known)
    assert card["open"]["unmatched_rate"] == pytest.approx(1 - known)
    assert card["open"]["nearest"]["encoder"].startswith("tfidf")
    for block in (options["4"], rows["hard"], card["open"], *card["wording"]["phrasings"]):
        a = block["accuracy"]
        assert a["ci_low"] <= a["value"] <= a["ci_high"] and a["n"] == 80
    assert card["invariance"]["measured"]["max_abs_diff"] == 0.0
    # Arms that score the same thing share one directory (k=26, random, the first wording).
    assert card["arms"]["options-26"] == card["arms"]["difficulty-random"]
    # The plan (launch/evalplan.py) counts the same scoring units before any question exists.
    planned = planned_arms(ecfg, len(folder30.samples), 30, model.scorers)
    assert sum(n for _, n in planned) == card["units"] == 80 * (3 + 1 + 1 + 2 + 4 + 1)
    metrics = json.loads((tmp_path / "out" / "protocol" / "options-2" / "metrics.json").read_text())
    assert metrics["num_options"] == 2  # every arm is an evaluation of its own (eval/results.py)


def test_protocol_config_fails_before_any_work():
    with pytest.raises(ConfigError, match="image_encoder"):
        validate_eval(EvalCfg(protocol=ProtocolCfg(enabled=True)))
    with pytest.raises(ConfigError, match="num_options"):
        validate_eval(EvalCfg(protocol=ProtocolCfg(num_options=[1, 4])))
    with pytest.raises(ConfigError, match="eval.protocol.difficulties"):
        validate_eval(EvalCfg(protocol=ProtocolCfg(difficulties=["easy"])))


def test_one_command_writes_the_card_for_a_tiny_qwen2_vl(cache_dir, tmp_path):
    """`evaluate.py model.path=<Qwen2-VL> eval=protocol ...` as composed from the command line:
    every axis on the card, the invariance measured on this model, the summary's line; and
    `all_classes` is the likeliest class name by a stock forward per class."""
    import family_models as fm
    from test_eval_families import _stock
    from test_eval_models import _tiny_clip

    from llava_ablate.base.chat_templates import processor_messages, render
    from llava_ablate.config import compose_config
    from llava_ablate.eval.models import MLLMChoiceModel
    from llava_ablate.eval.run import run_evaluation
    from llava_ablate.eval_config import validate_evaluate

    model, processor = fm.qwen2_vl(cache_dir)
    model.save_pretrained(tmp_path / "qwen")
    processor.save_pretrained(tmp_path / "qwen")
    clip, clip_processor = _tiny_clip(cache_dir)
    clip_processor.tokenizer.add_eos_token = True
    clip.save_pretrained(tmp_path / "clip")
    clip_processor.save_pretrained(tmp_path / "clip")
    digits = fx.digits_folder(tmp_path / "digits", per_class=1)
    overrides = [
        f"model.path={tmp_path / 'qwen'}", "model.dtype=fp32", "eval=protocol",
        "eval/datasets=[image_folder]", f"eval.datasets.image_folder.root={digits}",
        f"eval.questions.image_encoder=clip:{tmp_path / 'clip'}",
        "eval.protocol.rotations=3", "eval.scoring.max_new_tokens=4", "eval.stats.bootstrap=200",
        f"eval.questions.dir={tmp_path / 'q'}", f"out_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    with pytest.raises(Exception, match="num_option"):  # a typo fails before any work
        validate_evaluate(compose_config([*overrides, "eval.protocol.num_option=[2]"], "evaluate"))
    from omegaconf import OmegaConf

    summary = run_evaluation(OmegaConf.to_object(compose_config(overrides, "evaluate")))
    card = json.loads((tmp_path / "out" / "image_folder" / "metrics.json").read_text())["protocol"]
    assert [r["k"] for r in card["options"]] == ["2", "4", "10", "all"]  # 10 classes: k <= 10
    assert [r["distractors"] for r in card["difficulty"]] == ["random", "hard", "image"]
    assert card["difficulty"][2]["encoder"] == f"clip:{tmp_path / 'clip'}"
    assert len(card["wording"]["phrasings"]) == 3 and card["order"]["rotations"] == 3
    assert card["open"]["prompt"] and "nearest" in card["open"]
    measured = card["invariance"]["measured"]
    assert measured["dtype"] == "float32" and measured["max_abs_diff"] < 1e-4
    assert set(summary["image_folder"]["protocol"]) >= {"k2", "kall", "wording_range", "open"}
    # all_classes: the argmax of each class name's summed log-probability after the open
    # prompt, each by one stock forward of its own.
    preds = [json.loads(x) for x in (tmp_path / "out" / "image_folder" / "protocol" /
             "options-all" / "predictions.jsonl").read_text().splitlines()]  # fmt: skip
    cm = MLLMChoiceModel(model, processor)
    prompt = render(processor, processor_messages(cm.open_prompt), True)
    ds = load_dataset("digits", DatasetCfg(kind="image_folder", root=str(digits)))
    for p in preds[:2]:
        image = ds.load_image(ds.by_id()[p["qid"].split("/", 1)[1]])
        totals = []
        for name in ds.classnames:
            ids = cm.answer_ids(name)
            logp = _stock(model, processor, cm, image, prompt, ids)
            totals.append(sum(float(logp[j, t]) for j, t in enumerate(ids)))
        assert p["pred_class"] == ds.classnames[int(np.argmax(totals))]
    # The report shows the card: its table, one chart per axis, the numbers in report-data.
    from llava_ablate.cli import main as cli

    cli(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html"),
         "--cards", str(tmp_path / "out"), "--bootstrap", "100"])  # fmt: skip
    page = (tmp_path / "r.html").read_text()
    section = page[page.index("<h2>Protocol cards</h2>") :]
    for axis in ("options per question", "distractor difficulty", "wording", "option order",
                 "open answer vs multiple choice"):  # fmt: skip
        assert f"image_folder: accuracy by {axis}" in section
    assert section.count('<table class="card">') == 2  # the run's own, and once by --cards
    k2 = card["options"][0]["accuracy"]["value"]
    assert f'data-value="{k2!r}"' in section and "Measured on this model (float32" in section
    data = json.loads(page[page.index('id="report-data">') + 17 : page.rindex("</script>")])
    assert data["protocol_cards"][0]["card"]["options"] == card["options"]
