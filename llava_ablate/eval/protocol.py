"""The protocol sweep (`eval=protocol`): the same frozen questions asked under other protocols,
each an *arm* scored like any evaluation (resumable, sharded, results through eval/results.py)
into `<dataset>/protocol/<arm>/`; eval/card.py reads them into the dataset's protocol card.

Axes (eval.protocol):
- options: k in `num_options`, nested in the frozen set (true class + its first k-1
  distractors), and `all_classes` (the likeliest class name over every class);
- difficulty: `random`, `hard` (text-tower similarity), `image` (image-level confusions);
- wording: every phrasing of `wordings` (question + instruction);
- order: `rotations` cyclic rotations of the options (0: all k);
- open: free generation matched to the class names (scorer `open`).
Arms that would score the same thing (e.g. k=26 and the `random` difficulty of a random set)
share one directory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from llava_ablate.eval.questions import Question, QuestionSet, nested_question_set
from llava_ablate.eval_config import EvalCfg, WordingCfg

AXES = ("options", "difficulty", "wording", "order", "open")


@dataclass
class Arm:
    axis: str  # one of AXES
    value: str  # k ("2", "all"), a distractor strategy, a wording's index, rotations, "open"
    qset: QuestionSet
    ecfg: EvalCfg  # the wording and rotations it is asked with
    scorers: list[str]

    @property
    def name(self) -> str:
        return f"{self.axis}-{self.value}"

    @property
    def key(self) -> tuple:
        """What decides its predictions: arms with equal keys share one results directory."""
        q, rotations = self.ecfg.questions, self.ecfg.scoring.cyclic_permutations
        return (self.qset.fingerprint(), q.question, q.instruction, rotations, *self.scorers)


def sample_qids(qset: QuestionSet, n: int | None, seed: int) -> list[str]:
    """`n` question ids drawn without replacement (seeded per dataset; frozen order kept), or
    all of them: every arm asks the same questions."""
    qids = [q.qid for q in qset.questions]
    if n is None or n >= len(qids):
        return qids
    rng = np.random.default_rng([seed, zlib.crc32(qset.dataset.encode())])
    return [qids[i] for i in sorted(rng.choice(len(qids), size=n, replace=False))]


def restricted(qset: QuestionSet, qids: list[str]) -> QuestionSet:
    keep = set(qids)
    return replace(qset, questions=[q for q in qset.questions if q.qid in keep])


def _worded(ecfg: EvalCfg, wording: WordingCfg) -> EvalCfg:
    questions = replace(ecfg.questions, question=wording.question, instruction=wording.instruction)
    return replace(ecfg, questions=questions)


def _rotated(ecfg: EvalCfg, rotations: int) -> EvalCfg:
    return replace(ecfg, scoring=replace(ecfg.scoring, cyclic_permutations=rotations))


def protocol_arms(
    base: QuestionSet, by_difficulty: dict[str, QuestionSet], ecfg: EvalCfg, model_scorers
) -> list[Arm]:
    """Every arm of the sweep over `base` (the frozen set, already restricted to the sampled
    questions) and the difficulty axis's sets (restricted alike); arms whose scorer the model
    lacks (a CLIP baseline writes no open answer) are left out."""
    p = ecfg.protocol
    plain = replace(_rotated(ecfg, 0), stats=replace(ecfg.stats, compare_to=None))
    scorer = [p.scorer if p.scorer in model_scorers else "likelihood"]
    arms = []
    for k in sorted({min(k, base.num_options) for k in p.num_options}):
        arms.append(Arm("options", str(k), nested_question_set(base, k), plain, scorer))
    if p.all_classes:
        arms.append(Arm("options", "all", base, plain, ["all_classes"]))
    for strategy in p.difficulties:
        arms.append(Arm("difficulty", strategy, by_difficulty[strategy], plain, scorer))
    for i, wording in enumerate(p.wordings):
        arms.append(Arm("wording", str(i), base, _worded(plain, wording), scorer))
    rotations = min(p.rotations or base.num_options, base.num_options)
    arms.append(Arm("order", str(rotations), base, _rotated(plain, rotations), scorer))
    if p.open_answer:
        arms.append(Arm("open", "open", base, plain, ["open"]))
    return [a for a in arms if set(a.scorers) <= set(model_scorers)]


def arm_dirs(arms: list[Arm], root: Path) -> dict[str, Path]:
    """Arm name -> its results directory (`root/<first arm of its key>`)."""
    first: dict[tuple, Path] = {}
    return {a.name: first.setdefault(a.key, Path(root) / a.name) for a in arms}


def arm_units(arm: Arm) -> int:
    """Scoring units (forwards' worth of work, as the plan counts them) of an arm."""
    return len(arm.qset.questions) * max(1, arm.ecfg.scoring.cyclic_permutations)


def planned_arms(
    ecfg: EvalCfg, n_questions: int, n_classes: int, model_scorers
) -> list[tuple[Arm, int]]:
    """The sweep's distinct arms (one per results directory) and each one's scoring units,
    before any question set exists (launch/evalplan.py): the arms protocol_arms builds on a
    one-question stand-in of each set, scaled to the questions the sweep will ask."""
    k = min(ecfg.questions.num_options, n_classes)

    def stand_in(strategy: str) -> QuestionSet:
        options = ["true class", *(f"{strategy} {i}" for i in range(k - 1))]
        question = Question("plan/0", "0", options[0], options, "A")
        return QuestionSet("plan", strategy, ecfg.questions.seed, k, questions=[question])

    base = stand_in(ecfg.questions.distractors)
    sets = {d: base if d == base.strategy else stand_in(d) for d in ecfg.protocol.difficulties}
    n = min(n_questions, ecfg.protocol.max_questions or n_questions)
    distinct = {a.key: a for a in protocol_arms(base, sets, ecfg, model_scorers)}
    return [(a, arm_units(a) * n) for a in distinct.values()]
