"""The environment each row ran on and where rows differ in it: listed like the config keys
beyond the axes (collect.differing_keys), on the terminal, in the tables' notes and on the HTML
page; `--strict-env` makes a software difference an error.

A trained run's environment is the one it started with (`<run>/environment.json`, written by
the training run; its own evaluations ran in the same process); an evaluate.py results
directory's is the evaluation's (its `metrics.json`). Rows from before it was recorded have
none, and are named as such. What is recorded and compared: llava_ablate/run_environment.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llava_ablate.run_environment import KEYS, SOFTWARE, read_run_environment, shown


def read_environment(path: Path) -> dict[str, Any] | None:
    """The environment of a run directory or of an evaluate.py results directory; None when
    neither records one."""
    record = read_run_environment(path)
    if record is not None:
        return record["environment"]
    for metrics in [path / "metrics.json", *sorted(path.glob("*/metrics.json"))]:
        if metrics.exists():
            env = json.loads(metrics.read_text()).get("environment")
            if env:
                return env
    return None


def differing_environment(runs: list) -> dict[str, dict[str, list[str]]]:
    """key -> shown value -> the labels of the rows with it, for every key in which the rows
    that record an environment differ (in run_environment.KEYS order)."""
    recorded = [r for r in runs if r.environment is not None]
    out: dict[str, dict[str, list[str]]] = {}
    for key in KEYS:
        values: dict[str, list[str]] = {}
        for r in recorded:
            values.setdefault(shown(r.environment.get(key)), []).append(r.label)
        if len(values) > 1:
            out[key] = values
    return out


def mark_environment(runs: list) -> None:
    """Each run's `env_differs`: its value of every key the rows differ in (call after
    collect.label_runs)."""
    keys = differing_environment(runs)
    for r in runs:
        r.env_differs = (
            {k: shown(r.environment.get(k)) for k in keys} if r.environment is not None else {}
        )


def unrecorded(runs: list) -> list[str]:
    return [r.label for r in runs if r.environment is None]


def environment_lines(runs: list) -> list[str]:
    """`transformers 5.24.0 vs 5.25.0 (5.24.0: a; 5.25.0: b)` per differing key, and the rows
    without a record; [] when every row ran on the same recorded environment."""
    lines = []
    differing = differing_environment(runs)
    if differing:
        lines.append("The rows ran on different environments (software or hardware):")
    for key, values in differing.items():
        who = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in values.items())
        lines.append(f"{key} {' vs '.join(values)} ({who})")
    missing = unrecorded(runs)
    if missing and len(missing) < len(runs):
        lines.append(f"No environment recorded (from before it was): {', '.join(missing)}")
    return lines


def strict_environment_error(runs: list) -> str | None:
    """Why `--strict-env` refuses these rows: a software difference, or a row whose software is
    not recorded; None when they all ran on the same software."""
    software = {k: v for k, v in differing_environment(runs).items() if k in SOFTWARE}
    missing = unrecorded(runs)
    if not software and not missing:
        return None
    parts = [f"{k} {' vs '.join(v)}" for k, v in software.items()]
    if missing:
        parts.append(f"no environment recorded for {', '.join(missing)}")
    return "--strict-env: the rows were not all produced by the same software: " + "; ".join(parts)
