"""From per-question predictions to the reported numbers: overall / hard-class / per-class
accuracy with Wilson CIs, accuracy by answer position, unparsed answers, scorer agreement, cyclic
consistency, skipped questions, and the paired comparison with another run.

Questions skipped for an unreadable image stay in the frozen question set; every number here is
over the scored ones (`scored_subset`), with the skip count written next to it."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from llava_ablate.base.mcq import LETTERS
from llava_ablate.eval.questions import QuestionSet
from llava_ablate.eval.scoring import Prediction, Skip
from llava_ablate.eval.stats import paired_on_shared, wilson_accuracy


def _by(preds: list[Prediction], scorer: str, shift: int | None = 0) -> dict[str, Prediction]:
    return {p.qid: p for p in preds if p.scorer == scorer and (shift is None or p.shift == shift)}


def scored_subset(qset: QuestionSet, skipped: list[Skip]) -> QuestionSet:
    """The frozen set minus the skipped questions (same order); none left is an error."""
    gone = {s.qid for s in skipped}
    kept = [q for q in qset.questions if q.qid not in gone]
    if qset.questions and not kept:
        first = skipped[0]
        raise RuntimeError(
            f"{qset.dataset}: all {len(qset.questions)} questions were skipped "
            f"({skip_summary(skipped)['by_reason']}), e.g. {first.image}: {first.detail}; "
            f"check eval.datasets.{qset.dataset}.root and its image files"
        )
    return replace(qset, questions=kept)


def skip_summary(skipped: list[Skip]) -> dict:
    """What metrics.json says about skipped questions: counts per reason, ids and files."""
    return {
        "total": len(skipped),
        "by_reason": dict(sorted(Counter(s.reason for s in skipped).items())),
        "qids": [s.qid for s in skipped],
        "items": [asdict(s) for s in skipped],
    }


def scorer_metrics(
    qset: QuestionSet, preds: list[Prediction], scorer: str, hard: set[str], n_boot: int, seed: int
) -> dict:
    by_q = _by(preds, scorer)
    missing = [q.qid for q in qset.questions if q.qid not in by_q]
    if missing:
        raise ValueError(
            f"{len(missing)} questions have no {scorer} prediction, e.g. {missing[:3]}"
        )
    ordered = [by_q[q.qid] for q in qset.questions]
    correct = np.array([p.correct for p in ordered])
    k = qset.num_options
    # n_boot / seed serve the paired comparisons; a single accuracy gets a Wilson interval.
    out: dict = {"accuracy": wilson_accuracy(correct).as_dict()}
    if hard:
        mask = np.array([p.label in hard for p in ordered])
        out["hard_accuracy"] = wilson_accuracy(correct[mask]).as_dict()
        out["easy_accuracy"] = wilson_accuracy(correct[~mask]).as_dict()
    by_pos: dict[str, list[bool]] = defaultdict(list)
    chosen: dict[str, int] = defaultdict(int)
    for p in ordered:
        by_pos[p.answer].append(p.correct)
        if p.pred:
            chosen[p.pred] += 1
    out["accuracy_by_answer_position"] = {
        letter: {"accuracy": float(np.mean(by_pos[letter])), "n": len(by_pos[letter])}
        for letter in LETTERS[:k]
        if by_pos[letter]
    }
    # A position-blind model picks each letter ~1/k of the time.
    out["chosen_letter_frequency"] = {
        letter: chosen[letter] / len(ordered) for letter in LETTERS[:k]
    }
    unparsed = sum(p.pred is None for p in ordered)
    out["unparsed"] = unparsed
    out["unparsed_rate"] = unparsed / len(ordered)
    shifts = sorted({p.shift for p in preds if p.scorer == scorer})
    if len(shifts) > 1:
        out["cyclic"] = cyclic_consistency(qset, preds, scorer, shifts, n_boot, seed)
    return out


def cyclic_consistency(qset, preds, scorer, shifts, n_boot, seed) -> dict:
    """Consistent = the same class chosen under every rotation; all_correct = CircularEval."""
    rot = {(p.qid, p.shift): p for p in preds if p.scorer == scorer}
    same, all_right = [], []
    for q in qset.questions:
        ps = [rot[(q.qid, s)] for s in shifts]
        same.append(len({p.pred_class for p in ps}) == 1 and ps[0].pred_class is not None)
        all_right.append(all(p.correct for p in ps))
    return {
        "shifts": shifts,
        "consistency": float(np.mean(same)),
        "all_correct_accuracy": wilson_accuracy(all_right).as_dict(),
    }


def agreement(preds: list[Prediction], a: str, b: str) -> dict:
    pa, pb = _by(preds, a), _by(preds, b)
    common = sorted(set(pa) & set(pb))
    same = [pa[q].pred == pb[q].pred for q in common]
    both = [pa[q].correct == pb[q].correct for q in common]
    return {
        "n": len(common),
        "same_choice": float(np.mean(same)) if common else float("nan"),
        "same_correctness": float(np.mean(both)) if common else float("nan"),
    }


def per_class_rows(
    qset: QuestionSet, preds: list[Prediction], scorers: list[str], hard: set[str], n_boot, seed
) -> list[dict]:
    by_class: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for scorer in scorers:
        by_q = _by(preds, scorer)
        for q in qset.questions:
            by_class[q.label][scorer].append(by_q[q.qid].correct)
    rows = []
    for name in sorted(by_class):
        row: dict = {"class_name": name, "n": len(by_class[name][scorers[0]]), "hard": name in hard}
        for i, scorer in enumerate(scorers):
            est = wilson_accuracy(by_class[name][scorer])
            prefix = "" if i == 0 else f"{scorer}_"  # the first scorer is the headline column
            row |= {
                f"{prefix}accuracy": est.value,
                f"{prefix}ci_low": est.ci_low,
                f"{prefix}ci_high": est.ci_high,
            }
        rows.append(row)
    return rows


def write_per_class(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def compare_runs(
    qset: QuestionSet,
    preds: list[Prediction],
    other: list[Prediction],
    scorer: str,
    n_boot,
    seed,
    other_skipped: list[Skip] | None = None,
) -> dict:
    """This run (b) against another run (a) on the same frozen questions `qset`, paired on the
    questions both scored (`unpaired` counts those only one could score)."""
    mine, theirs = _by(preds, scorer), _by(other, scorer)
    qids = [q.qid for q in qset.questions]
    theirs_skipped = {s.qid for s in other_skipped or []}
    lost = [q for q in qids if q not in theirs and q not in theirs_skipped]
    if lost:
        raise ValueError(
            f"the run to compare with has no {scorer} prediction for {len(lost)} of these "
            f"questions (e.g. {lost[:3]}), and did not record them as skipped: it was not "
            "scored (completely) on this question set"
        )
    a = {q: theirs[q].correct for q in qids if q in theirs}
    b = {q: mine[q].correct for q in qids if q in mine}
    return paired_on_shared(a, b, n_boot, seed).as_dict()
