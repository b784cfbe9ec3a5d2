"""The frozen question set an evaluation asks, agreed across ranks: rank 0 builds and freezes it
(image-level distractors ranked by their tower here, so questions.py never loads one), the
others read the same file. evaluate.py's datasets and the protocol's difficulty sets alike."""

from __future__ import annotations

from pathlib import Path

from llava_ablate.base.distributed import DistInfo
from llava_ablate.base.files import file_lock
from llava_ablate.eval.image_confusions import image_rankings
from llava_ablate.eval.questions import QuestionSet, frozen_question_set


def shared_question_set(dataset, qcfg, qdir: Path, sub: dict, world: DistInfo) -> QuestionSet:
    """The frozen set of `qcfg`: rank 0 builds (and freezes) it, the others read it."""
    if world.rank == 0:
        # Jobs of an evaluation grid (other models, same dataset) share the directory.
        with file_lock(qdir / f".{dataset.name}.lock"):
            frozen_question_set(dataset, qcfg, qdir, sub, image_rankings)
    world.barrier()
    return frozen_question_set(dataset, qcfg, qdir, sub, image_rankings)
