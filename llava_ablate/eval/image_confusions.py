"""Image-level confusions (FOCI's distractors): for each image, the classes a CLIP/SigLIP image
embedding ranks highest. Unlike `hard` (names that read alike to a text tower, the same for
every image of a class), these are the classes *this image* could be mistaken for."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from llava_ablate.eval.baselines import SIMPLE_TEMPLATES, load_zero_shot
from llava_ablate.eval.datasets import ClassificationDataset, UnreadableImage

log = logging.getLogger(__name__)


def image_rankings(
    dataset: ClassificationDataset, spec: str, batch_size: int = 64
) -> dict[str, np.ndarray | None]:
    """{sample id: class indices, most similar to the image first}; None for an image that
    cannot be read. `spec`: "clip:<hub id or dir>" or "siglip:<hub id or dir>"."""
    kind, _, src = spec.partition(":")
    if kind not in ("clip", "siglip") or not src:
        raise ValueError(
            f"eval.questions.image_encoder={spec!r}; use clip:<hub id|dir> or siglip:<hub id|dir>"
        )
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    tower = load_zero_shot(src, torch.float32, device, list(SIMPLE_TEMPLATES))
    tower.with_classes(dataset.classnames)
    log.info("%s: image-level distractors ranked by %s", dataset.name, spec)
    ranked: dict[str, np.ndarray | None] = {}
    samples = dataset.samples
    for start in tqdm(range(0, len(samples), batch_size), desc=f"{dataset.name} [{spec}]"):
        batch, images = [], []
        for sample in samples[start : start + batch_size]:
            try:
                images.append(dataset.load_image(sample))
                batch.append(sample)
            except UnreadableImage:
                ranked[sample.id] = None
        if images:
            sims = tower.class_similarities(images).cpu().numpy()
            for sample, row in zip(batch, sims, strict=True):
                # A stable sort on (-sim, index) keeps ties deterministic.
                ranked[sample.id] = np.argsort(-row, kind="stable")
    return ranked
