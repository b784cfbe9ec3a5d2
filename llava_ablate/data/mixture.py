"""A mixture as declared (data_recipes/*.yaml) and as built (per-source shard manifests).

Sampling strategies select positions among a source's valid samples at read time, so one set of
shards per source serves every mixture that uses it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llava_ablate.base.config import choices_of
from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.shards import MANIFEST, StaleShards, covers, too_small
from llava_ablate.data.sources import unreleased_sources

log = logging.getLogger(__name__)

_STRATEGY = re.compile(r"^(all|first:(\d+(?:\.\d+)?)%|end:(\d+(?:\.\d+)?)%|random:(\d+))$")
ON_BAD_SHARD = choices_of(DataCfg, "on_bad_shard")


class MixtureNotBuilt(FileNotFoundError):
    pass


class BadShard(RuntimeError):
    """A shard differs from its manifest (cut short, unreadable, other bytes): data would be
    lost or wrong."""


def rebuild_command(mixture: str, overrides: list[str] | None = None) -> str:
    """`data build` with the run's own overrides (searchpath, paths.*, data.*, vision...: what
    composes the same mixture, in the same place, with the same options); else just the data."""
    return shlex.join(["llava-ablate", "data", "build", *(overrides or [f"data={mixture}"])])


def bad_shard_message(shard: Path, why: str, rebuild: str, skipping: bool = False) -> str:
    action = (
        ". on_bad_shard=skip: its samples are skipped and counted as bad_shard"
        if skipping
        else ", or set data.on_bad_shard=skip to skip its samples and count them as bad_shard"
    )
    return (
        f"shard {shard} is damaged: {why}. It was cut short or changed after the build; rebuild "
        f"it with `{rebuild}` (it verifies every shard and rebuilds the damaged ones){action}"
    )


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


@dataclass(frozen=True)
class BuiltShard:
    path: Path  # the tar
    count: int  # valid samples in it
    sha256: str | None  # the manifest's (the stream verifies it as it reads); None: not recorded


@dataclass
class BuiltSource:
    cfg: SourceCfg
    dir: Path
    shards: list[BuiltShard]
    positions: list[int]  # selected positions among the source's valid samples
    build_skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows, whole source
    max_image_side: int | None = None  # the build's (manifest); None: original images

    @property
    def selected(self) -> int:
        return len(self.positions)


@dataclass
class BuiltMixture:
    name: str
    sources: list[BuiltSource]
    on_bad_shard: str = "error"  # error | skip: what the stream does with a damaged shard
    rebuild_command: str = ""  # what a damaged shard's message tells to run

    @property
    def weighted(self) -> bool:
        return any(s.cfg.weight is not None for s in self.sources)

    @property
    def size(self) -> int:
        return sum(s.selected for s in self.sources)

    def build_skips(self) -> dict[str, int]:
        """Rows the build skipped, per reason, over the sources' whole files (before sampling)."""
        total: Counter = Counter()
        for s in self.sources:
            total.update(s.build_skipped)
        return dict(total)


def skip_report(
    mixture: BuiltMixture,
    run_skips: dict[str, int],
    truncated: dict[str, dict[str, int]] | None = None,
) -> dict:
    """What the run's data_skips.json holds: run-time skips next to the build-time ones, and
    the samples cut at recipe.max_length per source ({samples, tokens_dropped}): trained on,
    but not whole."""
    return {
        "run": dict(run_skips),
        "truncated": dict(truncated or {}),
        "build": mixture.build_skips(),
        "build_by_source": {s.cfg.name: dict(s.build_skipped) for s in mixture.sources},
    }


def _check_shard_sizes(rebuild: str, shards_dir: Path, manifest: dict, on_bad_shard: str) -> None:
    """A shard whose size differs from the manifest's lost data since the build: catch it
    before training, not as a quietly shorter epoch (the stream checks what it reads too)."""
    for shard in manifest["shards"]:
        tar = shards_dir / shard["file"]
        size = tar.stat().st_size if tar.exists() else None
        if size == shard["bytes"]:
            continue
        why = "missing" if size is None else f"{size} bytes, the manifest says {shard['bytes']}"
        if on_bad_shard == "error":
            raise BadShard(bad_shard_message(tar, why, rebuild))
        log.warning(bad_shard_message(tar, why, rebuild, skipping=True))


def open_mixture(data: DataCfg, seed: int, overrides: list[str] | None = None) -> BuiltMixture:
    """Read the built manifests; fail naming what to build when something is missing.
    `overrides`: the command line that composed `data` (a run's), for the rebuild command."""
    rebuild = rebuild_command(data.name, overrides)
    why = unreleased_sources(data)
    if why:
        raise MixtureNotBuilt(why)
    if data.on_bad_shard not in ON_BAD_SHARD:
        raise ValueError(f"data.on_bad_shard={data.on_bad_shard!r}; choose one of {ON_BAD_SHARD}")
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
        _check_shard_sizes(rebuild, d, manifest, data.on_bad_shard)
        shards = [
            BuiltShard(d / s["file"], s["count"], s.get("sha256")) for s in manifest["shards"]
        ]
        positions = select_positions(manifest["count"], src.sampling, seed)
        built.append(
            BuiltSource(
                src,
                d,
                shards,
                positions,
                dict(manifest.get("skipped", {})),
                manifest.get("max_image_side"),
            )
        )
    if missing:
        raise MixtureNotBuilt(
            f"mixture {data.name!r}: no shards for {missing[:5]} under {data.shards_dir}; build them "
            f"first: `{rebuild}`"
        )
    return BuiltMixture(data.name, built, data.on_bad_shard, rebuild)


def check_image_side(mixture: BuiltMixture, needed: int | None) -> None:
    """Refuse shards whose images were stored smaller than this run reads them (a build for a
    336 px tower under a 1152 px anyres run): they would train on blurred images silently."""
    for s in mixture.sources:
        if not covers(s.max_image_side, needed):
            raise StaleShards(too_small(s.cfg.name, s.dir, s.max_image_side, needed))
