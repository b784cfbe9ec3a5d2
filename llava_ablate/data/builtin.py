"""Datasets the project generates offline (no download), by the name `data.builtin` uses."""

from __future__ import annotations

from pathlib import Path

from llava_ablate.base.files import file_lock
from llava_ablate.config import DataCfg
from llava_ablate.data.mini_classify import build_mini_classify
from llava_ablate.data.shards import StaleShards, build_mixture
from llava_ablate.data.toy_digits import build_toy_digits, build_toy_digits_anyres

BUILTINS = {
    "toy_digits": build_toy_digits,
    "toy_digits_anyres": build_toy_digits_anyres,
    "mini_classify": build_mini_classify,
}


def generate_builtin(name: str, out: Path) -> Path:
    """Generate built-in dataset `name` into `out` once (concurrent callers wait for it)."""
    if name not in BUILTINS:
        raise ValueError(f"builtin={name!r}; known: {sorted(BUILTINS)}")
    out = Path(out)
    with file_lock(out.with_suffix(".lock")):
        return BUILTINS[name](out)


def prepare_builtin(data: DataCfg, seed: int, max_image_side: int | None = None) -> None:
    """Generate a built-in dataset and shard it on first use (real mixtures are built explicitly
    with `llava-ablate data build`). Safe to call from every rank: one does it, the others wait.
    `max_image_side`: data.max_image_side resolved for the run's tower (pixels, None: originals)."""
    if not data.builtin:
        return
    out = Path(data.sources[0].path).parent  # the sources live inside the generated directory
    generate_builtin(data.builtin, out)
    with file_lock(out.with_suffix(".shards.lock")):
        try:
            build_mixture(data, seed=seed, workers=1, max_image_side=max_image_side)
        except StaleShards:  # the recipe changed: generated data is rebuilt, never reused stale
            build_mixture(data, seed=seed, workers=1, force=True, max_image_side=max_image_side)
