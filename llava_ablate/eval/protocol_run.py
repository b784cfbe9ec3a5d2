"""Run the protocol sweep of one dataset (eval/protocol.py's arms) and build its card."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from llava_ablate.base.distributed import DistInfo
from llava_ablate.eval.card import protocol_card
from llava_ablate.eval.datasets import ClassificationDataset
from llava_ablate.eval.invariance import batch_deviation
from llava_ablate.eval.protocol import (
    Arm,
    arm_dirs,
    arm_units,
    protocol_arms,
    restricted,
    sample_qids,
)
from llava_ablate.eval.question_sets import shared_question_set
from llava_ablate.eval.questions import Question, QuestionSet
from llava_ablate.eval.scoring import PromptItem
from llava_ablate.eval_config import EvalCfg

log = logging.getLogger("llava_ablate.eval")


def model_scorers(model_type: str) -> tuple[str, ...]:
    """The scorers a `model.type` offers, before it is loaded: which arms it can answer."""
    if model_type == "mllm":
        from llava_ablate.eval.models import MLLMChoiceModel

        return MLLMChoiceModel.scorers
    from llava_ablate.eval.baselines import ZeroShotChoiceModel

    return ZeroShotChoiceModel.scorers


def difficulty_sets(
    dataset: ClassificationDataset,
    base: QuestionSet,
    ecfg: EvalCfg,
    qdir: Path,
    sub: dict,
    world: DistInfo,
) -> dict[str, QuestionSet]:
    """The difficulty axis's frozen sets (the base's own strategy is the base): built once by
    rank 0, before the model loads, and shared by every model like the base set."""
    out = {}
    for strategy in ecfg.protocol.difficulties:
        qcfg = replace(ecfg.questions, distractors=strategy)
        same = strategy == base.strategy
        out[strategy] = base if same else shared_question_set(dataset, qcfg, qdir, sub, world)
    return out


def sweep_arms(
    base: QuestionSet, by_difficulty: dict[str, QuestionSet], ecfg: EvalCfg, model_scorers
) -> list[Arm]:
    """The arms over the sampled questions (`eval.protocol.max_questions`)."""
    qids = sample_qids(base, ecfg.protocol.max_questions, ecfg.questions.seed)
    sets = {k: restricted(v, qids) for k, v in by_difficulty.items()}
    return protocol_arms(restricted(base, qids), sets, ecfg, model_scorers)


def protocol_sweep(
    model,
    dataset: ClassificationDataset,
    arms: list[Arm],
    ecfg: EvalCfg,
    out_dir: Path,
    *,
    evaluate: Callable,  # eval/run.py's evaluate_dataset, with the run's own arguments bound
    make_item_for: Callable[[EvalCfg], Callable[[Question], PromptItem]],
    world: DistInfo,
    finished: bool,
) -> dict | None:
    """Score every arm (resuming), then the card on rank 0 (None elsewhere, or when a shard of
    a sharded run only predicts). `finished`: every arm is predicted (the model is not loaded)."""
    dirs = arm_dirs(arms, Path(out_dir) / "protocol")
    done: set[Path] = set()
    total = sum(arm_units(a) for a in {a.key: a for a in arms}.values())
    if world.rank == 0:
        log.info("%s: protocol sweep of %d arms, %d scoring units: %s", dataset.name, len(arms),
                 total, ", ".join(a.name for a in arms))  # fmt: skip
    metrics = None
    for arm in arms:
        if dirs[arm.name] in done:
            continue
        done.add(dirs[arm.name])
        metrics = evaluate(model, dataset, arm.qset, arm.ecfg, dirs[arm.name],
                           make_item=make_item_for(arm.ecfg), scorers=arm.scorers)  # fmt: skip
    if world.rank != 0 or metrics is None:
        return None
    measured = None
    if ecfg.protocol.invariance_check and not finished:
        measured = measured_invariance(model, arms, ecfg, make_item_for)
    encoder = None
    if ecfg.protocol.open_encoder and any(a.axis == "open" for a in arms):
        from llava_ablate.eval.text_encoders import build_text_encoder

        encoder = build_text_encoder(ecfg.protocol.open_encoder, ecfg.questions.hard_encoder_path)
    return protocol_card(arms, dirs, dataset.classnames, n_boot=ecfg.stats.bootstrap,
                         seed=ecfg.stats.seed, open_prompt=ecfg.scoring.open_prompt,
                         encoder=encoder, invariance=measured)  # fmt: skip


def measured_invariance(model, arms: list[Arm], ecfg: EvalCfg, make_item_for) -> dict | None:
    """The largest score difference between batchings of the first questions of the wording
    arm (eval/invariance.py), on this model and dtype; None for a model without likelihoods."""
    arm = next((a for a in arms if a.axis == "wording"), None)
    if arm is None or not hasattr(model, "letter_scores"):
        return None
    make = make_item_for(arm.ecfg)
    items = [it for it in map(make, arm.qset.questions) if it.skip is None]
    items = items[: ecfg.protocol.invariance_check]
    if len(items) < 2:
        return None
    out = batch_deviation(model, items, arm.scorers, batch_size=2)
    dtype = next(model.model.parameters()).dtype if hasattr(model, "model") else None
    out["dtype"] = str(dtype).replace("torch.", "") if dtype is not None else None
    return out
