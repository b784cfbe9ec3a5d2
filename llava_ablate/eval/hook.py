"""Evaluation during training, on the DeepSpeed engine's module, every N steps and at the end.

Every rank calls `maybe_run` at the same step. Under ZeRO-3 each forward gathers parameters
from all ranks, so every rank must run the same number of forwards with the same batch
shapes: the questions are split into equal shares (the last rank's share padded with repeats
that are then dropped), scored with the likelihood scorers listed in eval.scoring.scorers (a
fixed number of forwards per question; `generate` is left to evaluate.py), and all-gathered.
A question whose image cannot be read still runs its forwards on a blank stand-in (ranks stay
in step), then is skipped and counted. Results go to <run_dir>/eval/step_<N>/<dataset>/ (the
files evaluate.py writes, eval/results.py) and are returned on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llava_ablate.base.config import ConfigError
from llava_ablate.base.distributed import DistInfo, current_world
from llava_ablate.base.faults import EvaluationFailed, agree
from llava_ablate.eval.datasets import ClassificationDataset
from llava_ablate.eval.image_confusions import image_rankings
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.metrics import scored_subset
from llava_ablate.eval.models import MLLMChoiceModel
from llava_ablate.eval.questions import QuestionSet, frozen_question_set
from llava_ablate.eval.results import tracked_metrics, write_results
from llava_ablate.eval.run import item_maker, log_skips
from llava_ablate.eval.scoring import Prediction, Skip, score_units, units_for
from llava_ablate.eval.store import PredictionStore
from llava_ablate.eval_config import HOOK_SCORERS, EvalCfg, validate_eval

log = logging.getLogger("llava_ablate.eval")


def _agreed(what: str, fn: Callable | None = None, *args):
    """`fn(*args)` (None: nothing to do on this rank), agreed with the other ranks: an error on
    any rank raises the same EvaluationFailed on every rank, before the next collective would
    leave the healthy ranks waiting for the failed one. Under ZeRO-3 the forwards themselves
    are collectives: an error inside one is bounded by train.dist_timeout_s only."""
    error, result = None, None
    try:
        result = fn(*args) if fn is not None else None
    except Exception as e:  # noqa: BLE001 - agreed, then raised on every rank
        error = e
    agree(error, EvaluationFailed, f"failed in the evaluation hook ({what})")
    return result


def _score_all(*args) -> list[Prediction]:
    return [p for preds in score_units(*args) for p in preds]


def equal_shares(n: int, world: int, rank: int) -> tuple[list[int], int]:
    """(indices this rank scores, how many of them are real): every rank gets ceil(n/world)."""
    per = -(-n // world)
    idx = list(range(rank * per, min((rank + 1) * per, n)))
    real = len(idx)
    filler = idx[-1] if idx else n - 1  # repeats of a real question keep the shapes honest
    return idx + [filler] * (per - real), real


class TrainingEvalHook:
    """`maybe_run(module, step, final=...)` -> {"eval/<dataset>/accuracy": ..., ...} or None."""

    def __init__(
        self,
        cfg: EvalCfg,
        processor,
        run_dir: str | Path,
        *,
        pad_to_square: bool = True,
        datasets: dict[str, ClassificationDataset] | None = None,
    ):
        validate_eval(cfg)
        self.cfg, self.processor = cfg, processor
        self.out = Path(run_dir) / "eval"
        self.pad = pad_to_square
        self._datasets = datasets  # tests may pass datasets directly
        self._prepared: list[tuple[ClassificationDataset, QuestionSet]] | None = None
        self._scorer: MLLMChoiceModel | None = None
        self.last_per_class: dict[str, list[dict]] = {}  # dataset -> rows of the latest run
        self.scorers = [s for s in cfg.scoring.scorers if s in HOOK_SCORERS]
        if (cfg.datasets or datasets) and not self.scorers:
            raise ConfigError(
                f"eval.scoring.scorers={cfg.scoring.scorers}: the training hook scores with "
                f"{list(HOOK_SCORERS)}; list one of them (generate runs in evaluate.py)"
            )
        if set(cfg.scoring.scorers) - set(self.scorers):
            log.info("the training hook scores %s; generate runs in evaluate.py", self.scorers)

    def due(self, step: int, final: bool) -> bool:
        h = self.cfg.hook
        if not self.cfg.datasets and not self._datasets:
            return False
        if final:
            return h.at_end
        return bool(h.every_steps) and step > 0 and step % h.every_steps == 0

    def _prepare(self, world: DistInfo) -> list[tuple[ClassificationDataset, QuestionSet]]:
        if self._prepared is None:
            q = self.cfg.questions
            datasets = self._datasets or {
                name: load_dataset(name, d, q.seed) for name, d in self.cfg.datasets.items()
            }
            qdir = Path(q.dir) if q.dir else self.out / "questions"
            prepared = []
            for ds in datasets.values():
                sub = {"hook": self.cfg.hook.max_questions}
                # Rank 0 writes the frozen set, then all read it; `_agreed` doubles as the barrier.
                write = frozen_question_set if world.rank == 0 else None
                _agreed(f"questions of {ds.name}", write, ds, q, qdir, sub, image_rankings)
                qs = _agreed(
                    f"reading {ds.name}", frozen_question_set, ds, q, qdir, sub, image_rankings
                )
                prepared.append((ds, self._subset(qs)))
            self._prepared = prepared
        return self._prepared

    def _subset(self, qs: QuestionSet) -> QuestionSet:
        """A fixed, seeded subset of at most hook.max_questions questions (same every step)."""
        limit = self.cfg.hook.max_questions
        if limit is None or len(qs.questions) <= limit:
            return qs
        rng = np.random.default_rng(self.cfg.questions.seed)
        keep = np.sort(rng.choice(len(qs.questions), size=limit, replace=False))
        return replace(qs, questions=[qs.questions[i] for i in keep])

    def maybe_run(self, module: torch.nn.Module, step: int, *, final: bool = False) -> dict | None:
        if not self.due(step, final):
            return None
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                return self._run(module, step)
        finally:
            module.train(was_training)

    def _run(self, module: torch.nn.Module, step: int) -> dict:
        world = current_world()
        if self._scorer is None or self._scorer.model is not module:
            sc = self.cfg.scoring
            self._scorer = MLLMChoiceModel(
                module, self.processor, names_prompt=sc.names_prompt, names_answer=sc.names_answer
            )
        results: dict = {}
        for ds, qs in self._prepare(world):
            image_processor = getattr(self.processor, "image_processor", None)
            make_item = item_maker(ds, self.cfg, image_processor, self.pad)
            units = units_for(qs.questions, 0)
            idx, real = equal_shares(len(units), world.world, world.rank)
            skips: list[Skip] = []
            mine: list[Prediction] = _agreed(  # before the all-gather a failed rank would miss
                f"scoring {ds.name}",
                _score_all,
                [units[i] for i in idx],
                self._scorer,
                self.scorers,
                make_item,
                self.cfg.scoring.batch_size,
                skips,
            )
            # Drop the padding: fillers repeat this rank's last real question (or, on a rank
            # with none, another rank's), so keep each real question's first prediction.
            real_keys = {units[i].key for i in idx[:real]}
            kept: dict[tuple[str, str], Prediction] = {}
            for p in mine:
                if p.key in real_keys:
                    kept.setdefault((p.scorer, p.key), p)
            mine = list(kept.values())
            skips = list({s.qid: s for s in skips if f"{s.qid}@0" in real_keys}.values())
            gathered = [(mine, skips)]
            if world.world > 1:
                gathered = [None] * world.world
                dist.all_gather_object(gathered, (mine, skips))
            preds = [p for part, _ in gathered for p in part]
            skipped = sorted((s for _, part in gathered for s in part), key=lambda s: s.qid)
            if world.rank == 0:
                if skipped:
                    log_skips(ds.name, skipped)
                results |= _agreed(
                    f"report of {ds.name}", self._report, ds, qs, preds, step, skipped
                )
            else:
                _agreed(f"report of {ds.name}")
        if world.world > 1:
            box = [results]
            dist.broadcast_object_list(box, src=0)
            results = box[0]
        return results

    def _report(self, ds, frozen, preds, step, skipped: list[Skip]) -> dict:
        out = self.out / f"step_{step}" / ds.name
        store = PredictionStore(out)
        store.clear()
        store.append(preds)
        store.append_skips(skipped)
        store.merge([f"{q.qid}@0" for q in scored_subset(frozen, skipped).questions])
        store.merge_skips({s.qid for s in skipped})
        results = write_results(out, ds, frozen, preds, self.cfg, self.scorers,
                                model=self.out.parent.name, skipped=skipped, step=step,
                                image_aspect="pad" if self.pad else "native")  # fmt: skip
        self.last_per_class[ds.name] = results.per_class  # rank 0: for the W&B per-class table
        return tracked_metrics(results.metrics)
