"""An evaluation's results on disk: one schema and one writer, whoever produced the numbers --
evaluate.py (eval/run.py), the training hook (eval/hook.py, `<run>/eval/step_<N>/<dataset>/`)
or the lmms-eval bridge (eval/lmms_bridge.py).

<dataset dir>/metrics.json   `write_results`; schema SCHEMA:
    schema          SCHEMA (readers refuse a newer one: `read_results`)
    model, step     who answered; the training step (null outside training)
    dataset, n_questions, n_scored, num_options
    skipped         questions whose image could not be read: total, by_reason, qids, items
    image_aspect    how the images reached the model: pad | native | processor
    question_set    fingerprint, distractors, encoder, seed, subsample (paired tests need the
                    same fingerprint)
    hard_classes    rule, n
    scorers         scorer -> accuracy, hard_accuracy, positions, ... (eval/metrics.py)
    extra_classes, agreement, compare_to, lmms_eval   where they apply
    protocol        the protocol card (eval/card.py), where eval.protocol.enabled: options,
                    difficulty, wording, order, open, invariance (an optional block: schema 1
                    readers that do not know it read the rest unchanged)
    environment     what produced the numbers (run_environment.py)
<dataset dir>/per_class.csv  class_name,n,hard,accuracy,ci_low,ci_high[,<scorer>_...]
<out>/metrics.json           evaluate.py's and the bridge's summary of every dataset:
                             `write_summary`
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.base.files import atomic_write, file_lock
from llava_ablate.eval.card import card_summary
from llava_ablate.eval.datasets import ClassificationDataset
from llava_ablate.eval.hard import HardClassSelector
from llava_ablate.eval.metrics import (
    agreement,
    compare_runs,
    per_class_rows,
    scored_subset,
    scorer_metrics,
    skip_summary,
    write_per_class,
)
from llava_ablate.eval.questions import QuestionSet
from llava_ablate.eval.scoring import Prediction, Skip
from llava_ablate.eval.store import _read, read_skips
from llava_ablate.eval_config import EvalCfg
from llava_ablate.run_environment import current_environment

log = logging.getLogger("llava_ablate.eval")

SCHEMA = 1
METRICS = "metrics.json"
PER_CLASS = "per_class.csv"


class ResultsError(ValueError):
    """A results directory is missing a file or holds an unexpected format."""


@dataclass
class Results:
    metrics: dict  # what metrics.json holds
    per_class: list[dict]  # what per_class.csv holds (the training run's W&B table, too)


def write_results(
    out_dir: Path,
    dataset: ClassificationDataset,
    frozen: QuestionSet,
    preds: list[Prediction],
    ecfg: EvalCfg,
    scorers: list[str],
    *,
    model: str,
    skipped: list[Skip] | None = None,
    image_aspect: str | None = None,
    step: int | None = None,
    compare_to: str | None = None,
    extra: dict | None = None,
) -> Results:
    """Score `preds` of the frozen set `frozen` and write the dataset's metrics.json and
    per_class.csv: every number over the scored questions, the skipped ones (unreadable images)
    counted per reason and named. `compare_to`: another results directory to pair with;
    `extra`: blocks of the producer's own (the bridge's `lmms_eval`)."""
    n_boot, seed = ecfg.stats.bootstrap, ecfg.stats.seed
    skipped = skipped or []
    qset = scored_subset(frozen, skipped)
    selector = HardClassSelector(ecfg.hard)
    hard = selector.select(dataset.classnames, dataset.name)
    metrics: dict = {
        "schema": SCHEMA,
        "model": model,
        "step": step,
        "dataset": dataset.name,
        "n_questions": len(frozen.questions),
        "n_scored": len(qset.questions),
        "skipped": skip_summary(skipped),
        "num_options": qset.num_options,
        "image_aspect": image_aspect,
        "question_set": {
            "fingerprint": frozen.fingerprint(),
            "distractors": qset.strategy,
            "encoder": qset.encoder,
            "seed": qset.seed,
            "subsample": qset.subsample,
        },
        "hard_classes": {"rule": selector.describe(), "n": len(hard)},
        "scorers": {s: scorer_metrics(qset, preds, s, hard, n_boot, seed) for s in scorers},
    }
    for s in scorers:  # the skip count next to every accuracy
        metrics["scorers"][s]["n_skipped"] = len(skipped)
    if dataset.extra_classes:  # e.g. ImageNet wnids beyond the 1000: options too
        metrics["extra_classes"] = {
            "count": len(dataset.extra_classes),
            "num_classes": len(dataset.classnames),
            "classes": dataset.extra_classes,
        }
    if "likelihood" in scorers and "generate" in scorers:
        metrics["agreement"] = agreement(preds, "likelihood", "generate")
    if compare_to:
        other_dir = Path(compare_to) / dataset.name
        other, other_skipped = _read(other_dir / "predictions.jsonl"), read_skips(other_dir)
        metrics["compare_to"] = {
            "run": str(compare_to),
            **{
                s: compare_runs(frozen, preds, other, s, n_boot, seed, other_skipped)
                for s in scorers
            },
        }
    metrics |= extra or {}
    metrics["environment"] = current_environment()  # what produced these numbers
    rows = per_class_rows(qset, preds, scorers, hard, n_boot, seed)
    out_dir = Path(out_dir)
    write_per_class(out_dir / PER_CLASS, rows)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    log_results(metrics)
    return Results(metrics, rows)


def log_results(metrics: dict) -> None:
    """One line per scorer: accuracy, interval, questions, skips (and the step in training)."""
    skipped = metrics["skipped"]
    where = f"step {metrics['step']} eval " if metrics.get("step") is not None else ""
    for scorer, m in metrics["scorers"].items():
        acc = m["accuracy"]
        log.info(
            "%s%s %s: accuracy %.4f [%.4f, %.4f] on %d questions (%d skipped%s)",
            where,
            metrics["dataset"],
            scorer,
            acc["value"],
            acc["ci_low"],
            acc["ci_high"],
            acc["n"],
            skipped["total"],
            f": {skipped['by_reason']}" if skipped["total"] else "",
        )


def tracked_metrics(metrics: dict) -> dict[str, float]:
    """What W&B logs of one dataset's metrics, under the same keys for the training hook and
    evaluate.py: `eval/<dataset>/<scorer>/accuracy[_ci_low|_ci_high]`, `hard_accuracy`, and
    the first scorer (the headline) again as `eval/<dataset>/accuracy`."""
    name = metrics["dataset"]
    flat: dict = {f"eval/{name}/skipped": metrics["skipped"]["total"]}
    for i, (scorer, m) in enumerate(metrics["scorers"].items()):
        acc = m["accuracy"]
        for prefix in [f"eval/{name}/{scorer}"] + ([f"eval/{name}"] if i == 0 else []):
            flat[f"{prefix}/accuracy"] = acc["value"]
            flat[f"{prefix}/accuracy_ci_low"] = acc["ci_low"]
            flat[f"{prefix}/accuracy_ci_high"] = acc["ci_high"]
            if "hard_accuracy" in m:
                flat[f"{prefix}/hard_accuracy"] = m["hard_accuracy"]["value"]
    return flat


def read_results(directory: Path) -> dict:
    """The metrics.json of a dataset's results directory, checked to be of this schema."""
    path = Path(directory) / METRICS
    if not path.exists():
        raise ResultsError(f"{path} is missing")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not JSON: {e}") from e
    if m.get("schema", SCHEMA) > SCHEMA:  # before the field: evaluate.py's shape, schema 1
        raise ResultsError(f"{path} has schema {m['schema']}; this version reads {SCHEMA}")
    if "question_set" not in m and isinstance(m.get("fingerprint"), str):
        # The training hook's results from before this schema: a finished run cannot re-run its
        # evaluation in place, so its top-level fingerprint is read as the question set's.
        m["question_set"] = {"fingerprint": m.pop("fingerprint")}
    if not isinstance(m.get("scorers"), dict) or not isinstance(m.get("question_set"), dict):
        raise ResultsError(
            f"{path} has no `scorers` or `question_set` mapping (schema {SCHEMA}, which "
            "evaluate.py and the training hook write); re-run the evaluation with this version"
        )
    return m


def summary_entry(metrics: dict) -> dict:
    """A dataset's line in the summary: each scorer's accuracy (and hard-class accuracy), the
    skips per reason, the extra classes counted."""
    entry: dict = {s: m["accuracy"] for s, m in metrics["scorers"].items()}
    for s, m in metrics["scorers"].items():
        if "hard_accuracy" in m:
            entry[f"{s}_hard"] = m["hard_accuracy"]
    entry["skipped"] = metrics["skipped"]["by_reason"]
    if metrics.get("protocol"):
        entry["protocol"] = card_summary(metrics["protocol"])
    if "extra_classes" in metrics:
        entry["extra_classes"] = metrics["extra_classes"]["count"]
    return entry


def write_summary(out: Path, model_name: str, summary: dict) -> None:
    """`<out>/metrics.json`: {dataset: summary_entry} merged into those already there -- the
    jobs of an evaluation grid score one dataset each into the same model's results directory."""
    path = Path(out) / METRICS
    with file_lock(Path(out) / ".metrics.lock"):
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(
            {"schema": SCHEMA, "model": model_name, **summary, "environment": current_environment()}
        )
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(merged, indent=2))
