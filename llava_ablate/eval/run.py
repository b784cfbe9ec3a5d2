"""Evaluate one model on the configured datasets: question sets -> predictions -> metrics.

results/<out_dir>/              (the files and their schema: eval/results.py)
  metrics.json                  every dataset's headline numbers (+ skipped questions)
  <dataset>/metrics.json        full metrics (CIs, positions, agreement, cyclic, comparison,
                                skipped questions per reason)
  <dataset>/predictions.jsonl   one line per (question, rotation, scorer)
  <dataset>/skipped.jsonl       questions whose image could not be read (qid, reason, file)
  <dataset>/per_class.csv       class_name,n,hard,accuracy,ci_low,ci_high[,<scorer>_...]
Runs on one process or under torchrun (questions sharded across ranks, rank 0 merges);
re-running the same command skips the questions already predicted. Every dataset is read (and
its questions frozen) before the model loads, so a wrong root fails in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from llava_ablate.base.distributed import DistInfo, dtype_for, join_world, shutdown_distributed
from llava_ablate.base.files import atomic_write, file_lock
from llava_ablate.data.images import (
    ImageAspect,
    image_aspect,
    is_anyres,
    mean_colour,
    pad_to_square,
)
from llava_ablate.eval.datasets import ClassificationDataset, UnreadableImage
from llava_ablate.eval.hard import HardClassSelector
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.protocol_run import (
    difficulty_sets,
    model_scorers,
    protocol_sweep,
    sweep_arms,
)
from llava_ablate.eval.question_sets import shared_question_set
from llava_ablate.eval.questions import Question, QuestionSet, mcq_prompt
from llava_ablate.eval.results import summary_entry, tracked_metrics, write_results, write_summary
from llava_ablate.eval.scoring import ChoiceModel, PromptItem, Skip, score_units, units_for
from llava_ablate.eval.store import PredictionStore
from llava_ablate.eval_config import EvalCfg, EvaluateConfig, model_tag, validate_evaluate
from llava_ablate.model.card import INFO as CARD_INFO
from llava_ablate.model.card import evaluations_in, record_evaluations
from llava_ablate.run_environment import current_environment
from llava_ablate.tracking import Tracker

log = logging.getLogger("llava_ablate.eval")


def item_maker(
    dataset: ClassificationDataset, ecfg: EvalCfg, image_processor=None, pad: bool = True
) -> Callable[[Question], PromptItem]:
    samples = dataset.by_id()
    fill = mean_colour(image_processor) if image_processor is not None else (127, 127, 127)

    def make(q: Question) -> PromptItem:
        text = mcq_prompt(q, ecfg.questions)
        try:
            image = dataset.load_image(samples[q.sample_id])
        except UnreadableImage as e:
            # A blank stand-in keeps the forwards per rank equal (ZeRO-3); score_units drops it.
            skip = Skip(q.qid, e.reason, e.image, e.detail)
            return PromptItem(q, Image.new("RGB", (32, 32), fill), text, skip)
        if pad:  # LLaVA-1.5 evaluates padded-to-square images, as it trains
            image = pad_to_square(image, fill)
        return PromptItem(q, image, text)

    return make


def evaluate_dataset(
    model: ChoiceModel,
    dataset: ClassificationDataset,
    qset: QuestionSet,
    ecfg: EvalCfg,
    out_dir: Path,
    *,
    make_item: Callable[[Question], PromptItem],
    scorers: list[str] | None = None,
    world: DistInfo | None = None,
    resume: bool = True,
    model_name: str = "model",
    shard: tuple[int, int] = (0, 1),
    image_aspect: str | None = None,
    extra: dict | None = None,
) -> dict | None:
    """Score `qset` (skipping finished units when resuming); metrics on rank 0, None elsewhere.

    `shard=(i, k)`, k > 1: score only units i, i+k, ... into files of this shard's own and
    return None; a later run with k = 1 finds them all predicted, merges and scores exactly as
    one job would have. `extra`: blocks metrics.json gets besides (the protocol card)."""
    world = world or DistInfo()
    scorers = scorers or list(ecfg.scoring.scorers)
    index, count = shard
    store = PredictionStore(out_dir, world.rank, f".shard{index}" if count > 1 else "")
    if not resume and world.rank == 0:
        store.clear()
    world.barrier()
    units = units_for(qset.questions, ecfg.scoring.cyclic_permutations)
    done = store.done(scorers)
    todo = [u for u in units[index::count] if u.key not in done]
    mine = todo[world.rank :: world.world]
    if world.rank == 0:
        log.info(
            "%s: %d of %d units to score (%d done)",
            dataset.name,
            len(todo),
            len(units),
            len(units) - len(todo),
        )
    bar = tqdm(total=len(mine), desc=f"{dataset.name} [{model_name}]", disable=world.rank != 0)
    skips: list[Skip] = []
    scored = score_units(mine, model, scorers, make_item, ecfg.scoring.batch_size, skips)
    for preds in scored if mine else ():  # nothing left: the model may not even be loaded
        store.append(preds)
        bar.update(len(preds) // len(scorers) + len(skips))
        if skips:
            log_skips(dataset.name, skips)
            store.append_skips(skips)
            skips.clear()
    bar.close()
    world.barrier()
    if count > 1:  # merging now would race the other shards' writers
        return None
    result = None
    if world.rank == 0:
        preds = store.merge([u.key for u in units])
        done = store.done(scorers)
        scored = {u.question.qid for u in units if u.key in done}
        unscored = {q.qid for q in qset.questions} - scored
        skipped = store.merge_skips(unscored)
        result = write_results(out_dir, dataset, qset, preds, ecfg, scorers, model=model_name,
                               skipped=skipped, image_aspect=image_aspect,
                               compare_to=ecfg.stats.compare_to, extra=extra).metrics  # fmt: skip
    world.barrier()
    return result


def log_skips(dataset: str, skips: list[Skip]) -> None:
    for s in {s.qid: s for s in skips}.values():
        log.warning(
            "%s: question %s skipped (%s): %s [%s]", dataset, s.qid, s.reason, s.image, s.detail
        )


def load_model(cfg: EvaluateConfig, world: DistInfo):
    """(ChoiceModel, image processor or None) for `model.type`."""
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    m = cfg.model
    if m.type == "mllm":
        from llava_ablate.eval.models import MLLMChoiceModel, load_mllm
        from llava_ablate.eval.open_answer import load_synonyms

        model, processor = load_mllm(m.path, dtype_for(m.dtype), device, m.attn_implementation)
        sc = cfg.eval.scoring
        choice = MLLMChoiceModel(
            model,
            processor,
            max_new_tokens=sc.max_new_tokens,
            names_prompt=sc.names_prompt,
            names_answer=sc.names_answer,
            open_prompt=sc.open_prompt,
            synonyms=load_synonyms(sc.synonyms),
        )
        return choice, getattr(processor, "image_processor", None)
    from llava_ablate.eval.baselines import load_templates, load_zero_shot

    choice = load_zero_shot(m.path, dtype_for(m.dtype), device, load_templates(m.templates))
    return choice, choice.processor.image_processor


def image_aspect_of(cfg: EvaluateConfig, image_processor, family=None) -> ImageAspect:
    """How the images reach the model: `pad` (LLaVA-1.5's pad-to-square), `native` (as its
    processor takes them) or `processor` (a CLIP/SigLIP baseline's own resize and crop).
    `model.image_aspect=auto` follows the family's makers (its adapter's `image_aspect`); an
    anyres processor (`image_grid_pinpoints`) tiles at the image's own aspect ratio, never pads."""
    if cfg.model.type != "mllm":
        return "processor"
    aspect = cfg.model.image_aspect
    if aspect == "auto":
        if family is None:  # the model is not loaded (metrics only): its config says which
            from transformers import AutoConfig

            from llava_ablate.eval.families import family_for

            family = family_for(AutoConfig.from_pretrained(cfg.model.path).model_type)
        aspect = family.image_aspect
        log.info("model.image_aspect=auto: %s, as the %s family is evaluated", aspect, family.name)
    anyres = is_anyres(image_processor)
    if aspect == "pad" and anyres:
        log.info("anyres image processor: images keep their aspect ratio (no pad-to-square)")
    return image_aspect(aspect, anyres=anyres)


def run_evaluation(cfg: EvaluateConfig) -> dict:
    """The whole evaluation; returns {dataset: metrics} on rank 0 ({} elsewhere)."""
    validate_evaluate(cfg)
    # Leave only a process group joined here: an in-process caller's group (a notebook, a test,
    # a DeepSpeed job) is theirs, and DeepSpeed keeps a handle to it.
    joined = not dist.is_initialized()
    world = join_world()
    joined = joined and dist.is_initialized()
    out = Path(cfg.out_dir)
    qdir = Path(cfg.eval.questions.dir) if cfg.eval.questions.dir else out / "questions"
    model_name = model_tag(cfg.model.name, cfg.model.path)
    _claim_out_dir(out, cfg, world)
    # Datasets and their frozen questions first: a wrong root or layout fails before the
    # (possibly minutes-long) model load.
    prepared = []
    for name, dcfg in cfg.eval.datasets.items():
        dataset = load_dataset(name, dcfg, cfg.eval.questions.seed)
        sub = {"per_class": dcfg.per_class, "total": dcfg.total}
        qset = shared_question_set(dataset, cfg.eval.questions, qdir, sub, world)
        arms = _protocol_arms(cfg, dataset, qset, qdir, sub, world)
        prepared.append((name, dataset, qset, arms))
        # A missing exposure table or reference run fails now, not after the scoring.
        HardClassSelector(cfg.eval.hard).select(dataset.classnames, dataset.name)
    scorers = list(cfg.eval.scoring.scorers)
    if cfg.model.type != "mllm" and "all_classes" not in scorers:
        scorers.append("all_classes")  # the classic zero-shot number comes for free
    shard = (cfg.shard.index, cfg.shard.count)
    pending = (
        _pending(out / name, qset, cfg.eval, scorers, shard)
        or any(
            _pending(d, a.qset, a.ecfg, a.scorers, shard) for a, d in _arm_dirs(out / name, arms)
        )
        for name, _, qset, arms in prepared
    )
    if not cfg.resume or any(pending):
        model, image_processor = load_model(cfg, world)
    else:  # a finished run again, or the merge after the shards: the files hold everything
        log.info("every question is predicted: metrics only, the model is not loaded")
        model, image_processor = None, None
    tracker = _tracker(cfg, model_name) if world.rank == 0 else None
    summary: dict = {}
    aspect = image_aspect_of(cfg, image_processor, getattr(model, "family", None))
    for name, dataset, qset, arms in prepared:
        if hasattr(model, "with_classes"):
            model.with_classes(dataset.classnames)
        common = dict(world=world, resume=cfg.resume, model_name=model_name, shard=shard,
                      image_aspect=aspect)  # fmt: skip
        card = None
        if arms:
            card = protocol_sweep(
                model, dataset, arms, cfg.eval, out / name,
                evaluate=partial(evaluate_dataset, **common),
                make_item_for=partial(item_maker, dataset, image_processor=image_processor,
                                      pad=aspect == "pad"),
                world=world, finished=model is None,
            )  # fmt: skip
        metrics = evaluate_dataset(
            model,
            dataset,
            qset,
            cfg.eval,
            out / name,
            make_item=item_maker(dataset, cfg.eval, image_processor, aspect == "pad"),
            scorers=scorers,
            extra={"protocol": card} if card else None,
            **common,
        )
        if metrics is not None:
            summary[name] = summary_entry(metrics)
            if tracker is not None:
                tracker.log(tracked_metrics(metrics))
    if world.rank == 0:
        write_summary(out, model_name, summary)
        _update_model_card(cfg, out)
        if tracker is not None:
            tracker.finish()
    if joined:
        shutdown_distributed()
    return summary


def _protocol_arms(cfg: EvaluateConfig, dataset, qset: QuestionSet, qdir, sub, world) -> list:
    """The protocol sweep's arms of a dataset (`eval.protocol.enabled`), its question sets
    frozen now, before the model loads; [] when the sweep is off."""
    if not cfg.eval.protocol.enabled:
        return []
    sets = difficulty_sets(dataset, qset, cfg.eval, qdir, sub, world)
    return sweep_arms(qset, sets, cfg.eval, model_scorers(cfg.model.type))


def _arm_dirs(out: Path, arms: list) -> list:
    from llava_ablate.eval.protocol import arm_dirs

    dirs = arm_dirs(arms, out / "protocol")
    return [(a, dirs[a.name]) for a in arms]


def _update_model_card(cfg: EvaluateConfig, out: Path) -> None:
    """An export of ours lists these results in its model card (model/card.py)."""
    export = Path(cfg.model.path or "")
    if cfg.model.type != "mllm" or not (export / CARD_INFO).exists():
        return  # a hub model or a baseline: not ours to annotate
    try:
        card = record_evaluations(export, evaluations_in(out, f"`llava-ablate evaluate`, {out}"))
    except OSError as e:  # a read-only copy of the export: the results stand without the card
        log.warning("results not added to %s's model card: %s", export, e)
        return
    log.info("model card updated: %s", card)


def _pending(directory: Path, qset: QuestionSet, ecfg: EvalCfg, scorers, shard) -> bool:
    """Whether this run (this shard) has a unit of `qset` left to score."""
    if not Path(directory).exists():
        return True
    units = units_for(qset.questions, ecfg.scoring.cyclic_permutations)[shard[0] :: shard[1]]
    done = PredictionStore(directory).done(scorers)
    return any(u.key not in done for u in units)


def _claim_out_dir(out: Path, cfg: EvaluateConfig, world: DistInfo) -> None:
    """Refuse to resume another model's predictions into this results directory."""
    marker = out / "run.json"
    if world.rank == 0:
        mine = {"model_type": cfg.model.type, "model_path": cfg.model.path}
        # An evaluation grid's jobs (one per dataset) claim the same directory at once.
        with file_lock(out / ".run.lock"):
            if marker.exists() and cfg.resume:
                theirs = json.loads(marker.read_text())
                if theirs != mine:
                    raise ValueError(
                        f"{out} holds results of {theirs}; set out_dir (or model.name) per "
                        "model, or resume=false to overwrite"
                    )
            with atomic_write(marker) as tmp:
                tmp.write_text(json.dumps(mine))
    world.barrier()


def _tracker(cfg: EvaluateConfig, model_name: str) -> Tracker:
    """W&B as training has it (tracking.py): offline without credentials, never failing the
    evaluation; a run of its own per invocation (an evaluation grid's jobs share `out_dir`)."""
    return Tracker(
        enabled=cfg.eval.wandb,
        project=cfg.eval.wandb_project,
        entity=None,
        group=None,
        name=f"eval-{model_name}",
        run_dir=Path(cfg.out_dir),
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),  # type: ignore[arg-type]
        run_id=f"eval-{uuid.uuid4().hex[:12]}",
        job_type="eval",
        environment=current_environment(),
    )
