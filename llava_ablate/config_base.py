"""The config pieces every layer shares (kept apart so eval/config.py and config.py can both
import them without a cycle)."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


@dataclass
class PathsCfg:
    data_root: str = "data"
    shards_root: str = "data/shards"
    cache_dir: str = ".cache/llava_ablate"
