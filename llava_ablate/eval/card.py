"""The protocol card of one model on one dataset: what its classification number becomes under
each protocol axis (eval/protocol.py's arms), every accuracy with its Wilson 95% interval and
every difference paired question by question with its bootstrap interval. It goes into the
dataset's metrics.json as the `protocol` block (eval/results.py) and into the HTML report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from llava_ablate.eval.invariance import GUARANTEE
from llava_ablate.eval.metrics import cyclic_consistency
from llava_ablate.eval.open_answer import nearest_classes
from llava_ablate.eval.protocol import Arm, arm_units
from llava_ablate.eval.scoring import Prediction
from llava_ablate.eval.stats import paired_on_shared, wilson_accuracy
from llava_ablate.eval.store import MERGED, _read, read_skips


class ArmResults:
    """An arm's predictions (its scorer's, unrotated unless asked) from its directory."""

    def __init__(self, arm: Arm, directory: Path):
        self.arm, self.dir = arm, Path(directory)
        skipped = {s.qid for s in read_skips(self.dir)}
        wanted = {q.qid for q in arm.qset.questions} - skipped
        scorer = arm.scorers[0]
        self.preds = [p for p in _read(self.dir / MERGED)
                      if p.scorer == scorer and p.qid in wanted]  # fmt: skip

    def correct(self, shift: int = 0) -> dict[str, bool]:
        return {p.qid: p.correct for p in self.preds if p.shift == shift}

    def accuracy(self) -> dict:
        return wilson_accuracy(list(self.correct().values())).as_dict()


def _paired(reference: dict[str, bool], other: dict[str, bool], n_boot: int, seed: int) -> dict:
    """other - reference on the questions both scored (paired bootstrap CI, exact McNemar)."""
    c = paired_on_shared(reference, other, n_boot, seed)
    return {"delta": c.delta, "ci_low": c.delta_ci_low, "ci_high": c.delta_ci_high,
            "mcnemar_p": c.mcnemar_p, "n": c.n}  # fmt: skip


def spread(columns: list[dict[str, bool]], n_boot: int, seed: int) -> dict:
    """min, max, sd and range (max - min) of the accuracies of paired runs (one {qid: right?}
    each, on the questions they share), and whether the range exceeds what question sampling
    alone gives: a permutation test that shuffles each question's answers across the runs
    (exchangeable if the protocol does not matter), with the null range's 95th percentile."""
    shared = sorted(set.intersection(*(set(c) for c in columns)))
    m = np.array([[c[q] for c in columns] for q in shared], dtype=float)
    acc = m.mean(axis=0)
    observed = float(acc.max() - acc.min())
    rng = np.random.default_rng(seed)
    null = np.array([np.ptp(rng.permuted(m, axis=1).mean(axis=0)) for _ in range(n_boot)])
    return {
        "min": float(acc.min()),
        "max": float(acc.max()),
        "sd": round(float(acc.std(ddof=1)), 12) if len(acc) > 1 else 0.0,
        "range": observed,
        "null_range_95": float(np.quantile(null, 0.95)),
        "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + n_boot)),
        "n": len(shared),
    }


def _options(results: list[ArmResults], n_classes: int, n_boot: int, seed: int) -> list[dict]:
    ks = [r for r in results if r.arm.value != "all"]
    reference = max(ks, key=lambda r: int(r.arm.value)) if ks else None
    rows = []
    for r in results:
        k = n_classes if r.arm.value == "all" else int(r.arm.value)
        row = {"k": r.arm.value, "options": k, "chance": 1 / k, "accuracy": r.accuracy(),
               "scorer": r.arm.scorers[0]}  # fmt: skip
        if reference is not None and r is not reference:
            row["vs"] = f"k={reference.arm.value}"
            row["paired"] = _paired(reference.correct(), r.correct(), n_boot, seed)
        rows.append(row)
    return rows


def _difficulty(results: list[ArmResults], n_boot: int, seed: int) -> list[dict]:
    rows = []
    for r in results:
        row = {"distractors": r.arm.value, "encoder": r.arm.qset.encoder,
               "accuracy": r.accuracy()}  # fmt: skip
        if r is not results[0]:
            row["vs"] = results[0].arm.value
            row["paired"] = _paired(results[0].correct(), r.correct(), n_boot, seed)
        rows.append(row)
    return rows


def _wording(results: list[ArmResults], n_boot: int, seed: int) -> dict:
    phrasings = [{"question": r.arm.ecfg.questions.question,
                  "instruction": r.arm.ecfg.questions.instruction,
                  "accuracy": r.accuracy()} for r in results]  # fmt: skip
    return {"phrasings": phrasings,
            "spread": spread([r.correct() for r in results], n_boot, seed)}  # fmt: skip


def _order(r: ArmResults, n_boot: int, seed: int) -> dict:
    shifts = sorted({p.shift for p in r.preds})
    qset = r.arm.qset
    kept = {p.qid for p in r.preds if p.shift == 0}
    qset = replace(qset, questions=[q for q in qset.questions if q.qid in kept])
    cyclic = cyclic_consistency(qset, r.preds, r.arm.scorers[0], shifts, n_boot, seed)
    return {
        "rotations": len(shifts),
        "consistency": cyclic["consistency"],
        "all_correct_accuracy": cyclic["all_correct_accuracy"],
        "per_rotation": [wilson_accuracy(list(r.correct(s).values())).as_dict() for s in shifts],
        "spread": spread([r.correct(s) for s in shifts], n_boot, seed),
    }


def _open(r: ArmResults, classnames: list[str], encoder) -> dict:
    preds: list[Prediction] = r.preds
    out = {
        "prompt": None,
        "accuracy": r.accuracy(),
        "matched": "normalised match of the answer against each class's name and synonyms",
        "unmatched_rate": float(np.mean([p.pred_class is None for p in preds])) if preds else 0.0,
        "examples": [
            {"label": p.label, "answer": p.raw, "matched": p.pred_class} for p in preds[:5]
        ],  # fmt: skip
    }
    if encoder is not None and preds:
        nearest = nearest_classes([p.raw or "" for p in preds], classnames, encoder.embed)
        right = [n == p.label for n, p in zip(nearest, preds, strict=True)]
        out["nearest"] = {
            "encoder": encoder.name,
            "label": f"nearest class name by {encoder.name} (every answer gets a class, "
            "named or not: an upper bound on what the answers mean, not a match)",
            "accuracy": wilson_accuracy(right).as_dict(),
        }
    return out


def protocol_card(
    arms: list[Arm],
    dirs: dict[str, Path],
    classnames: list[str],
    *,
    n_boot: int,
    seed: int,
    open_prompt: str | None = None,
    encoder=None,  # TextEncoder for the open answers' nearest class (None: not reported)
    invariance: dict | None = None,
) -> dict:
    """The card from the arms' results directories (`dirs`: arm name -> directory)."""
    results = [ArmResults(a, dirs[a.name]) for a in arms]
    by_axis = {axis: [r for r in results if r.arm.axis == axis] for axis in
               ("options", "difficulty", "wording", "order", "open")}  # fmt: skip
    card: dict = {
        "scorer": next((a.scorers[0] for a in arms if a.axis == "wording"), None),
        "n_questions": len(arms[0].qset.questions) if arms else 0,
        "units": sum(arm_units(a) for a in {a.key: a for a in arms}.values()),
        "arms": {a.name: str(dirs[a.name]) for a in arms},
    }
    if by_axis["options"]:
        card["options"] = _options(by_axis["options"], len(classnames), n_boot, seed)
    if by_axis["difficulty"]:
        card["difficulty"] = _difficulty(by_axis["difficulty"], n_boot, seed)
    if by_axis["wording"]:
        card["wording"] = _wording(by_axis["wording"], n_boot, seed)
    if by_axis["order"]:
        card["order"] = _order(by_axis["order"][0], n_boot, seed)
    if by_axis["open"]:
        card["open"] = _open(by_axis["open"][0], classnames, encoder) | {"prompt": open_prompt}
    card["invariance"] = {"guarantee": GUARANTEE, "measured": invariance}
    return card


def card_summary(card: dict) -> dict:
    """The card's headline figures, for the summary metrics.json (one line per axis)."""
    out: dict = {}
    for row in card.get("options", []):
        out[f"k{row['k']}"] = row["accuracy"]["value"]
    for row in card.get("difficulty", []):
        out[f"distractors_{row['distractors']}"] = row["accuracy"]["value"]
    if "wording" in card:
        out["wording_range"] = card["wording"]["spread"]["range"]
    if "order" in card:
        out["order_consistency"] = card["order"]["consistency"]
        out["order_all_correct"] = card["order"]["all_correct_accuracy"]["value"]
    if "open" in card:
        out["open"] = card["open"]["accuracy"]["value"]
    return out
