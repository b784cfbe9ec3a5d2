"""A mixture as declared (data_recipes/*.yaml) and as built (per-source shard manifests).

Sampling strategies select positions among a source's valid samples at read time, so one set of
shards per source serves every mixture that uses it.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.shards import MANIFEST
from llava_ablate.data.sources import unreleased_sources

_STRATEGY = re.compile(r"^(all|first:(\d+(?:\.\d+)?)%|end:(\d+(?:\.\d+)?)%|random:(\d+))$")


class MixtureNotBuilt(FileNotFoundError):
    pass


def check_sampling(strategy: str, where: str) -> None:
    if not _STRATEGY.match(strategy):
        raise ValueError(f"{where}: sampling={strategy!r}; use all, first:N%, end:N% or random:N")


def select_positions(count: int, strategy: str, seed: int) -> list[int]:
    """Positions (0..count-1, ascending) that the strategy keeps."""
    m = _STRATEGY.match(strategy)
    if m is None:
        raise ValueError(f"sampling={strategy!r}; use all, first:N%, end:N% or random:N")
    if strategy == "all":
        return list(range(count))
    if m.group(2):
        return list(range(math.ceil(count * float(m.group(2)) / 100)))
    if m.group(3):
        k = math.ceil(count * float(m.group(3)) / 100)
        return list(range(count - k, count))
    n = min(int(m.group(4)), count)
    return sorted(random.Random(seed).sample(range(count), n))


@dataclass
class BuiltSource:
    cfg: SourceCfg
    dir: Path
    shards: list[tuple[Path, int]]  # (tar, valid samples)
    positions: list[int]  # selected positions among the source's valid samples

    @property
    def selected(self) -> int:
        return len(self.positions)


@dataclass
class BuiltMixture:
    name: str
    sources: list[BuiltSource]

    @property
    def weighted(self) -> bool:
        return any(s.cfg.weight is not None for s in self.sources)

    @property
    def size(self) -> int:
        return sum(s.selected for s in self.sources)


def open_mixture(data: DataCfg, seed: int) -> BuiltMixture:
    """Read the built manifests; fail naming what to build when something is missing."""
    why = unreleased_sources(data)
    if why:
        raise MixtureNotBuilt(why)
    weights = [s.weight for s in data.sources]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise ValueError(f"mixture {data.name!r}: give every source a weight, or none")
    built, missing = [], []
    for k, src in enumerate(data.sources):
        check_sampling(src.sampling, f"data.sources[{k}] ({src.name})")
        d = Path(data.shards_dir) / src.name
        if not (d / MANIFEST).exists():
            missing.append(src.name)
            continue
        manifest = json.loads((d / MANIFEST).read_text())
        shards = [(d / s["file"], s["count"]) for s in manifest["shards"]]
        positions = select_positions(manifest["count"], src.sampling, seed)
        built.append(BuiltSource(src, d, shards, positions))
    if missing:
        raise MixtureNotBuilt(
            f"mixture {data.name!r}: no shards for {missing[:5]} under {data.shards_dir}; build them "
            f"first: `llava-ablate data build data={data.name}`"
        )
    return BuiltMixture(data.name, built)
