"""Read what runs left on disk into typed records: the resolved config, the training curves
(`metrics.jsonl`) and the evaluator's results (`metrics.json`, `predictions.jsonl`,
`per_class.csv` per dataset) -- from a training run's `eval/step_<N>/` (the latest step) or from
an `evaluate.py` results directory. Nothing here computes a number the files do not hold."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

AXES = ("vision", "llm", "projector", "data", "recipe", "deepspeed")


class ResultsError(ValueError):
    """A run or results directory is missing a file or holds an unexpected format."""


@dataclass
class Accuracy:
    value: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class DatasetResult:
    dataset: str
    scorer: str
    accuracy: Accuracy
    hard: Accuracy | None
    fingerprint: str | None  # the frozen question set: paired comparisons need it equal
    correct: dict[str, bool]  # question id -> right? (unrotated predictions of `scorer`)
    per_class: list[dict]  # per_class.csv rows (class_name, n, hard, accuracy, ci_low, ci_high)
    source: Path  # the dataset's results directory


@dataclass
class RunResult:
    path: Path
    axes: dict[str, str]  # axis -> option (llm=qwen2, ...), from config.yaml
    config_text: str  # the exact resolved config, as written by the run
    curves: list[dict]  # metrics.jsonl rows
    datasets: dict[str, DatasetResult] = field(default_factory=dict)
    eval_dir: Path | None = None
    label: str = ""  # set by `label_runs`: the axes that differ between the compared runs


def _axes(config: dict) -> dict[str, str]:
    out = {}
    for axis in AXES:
        node = config.get(axis)
        if isinstance(node, dict):
            out[axis] = str(node.get("name") or node.get("type"))
    return out


def _accuracy(node: dict, where: Path) -> Accuracy:
    try:
        return Accuracy(float(node["value"]), float(node["ci_low"]), float(node["ci_high"]),
                        int(node["n"]))  # fmt: skip
    except (KeyError, TypeError) as e:
        raise ResultsError(f"{where}: accuracy entry lacks {e} (value, ci_low, ci_high, n)") from e


def _for_scorer(row: dict, scorer: str) -> dict:
    """per_class.csv holds the first scorer as `accuracy` and the others as `<scorer>_accuracy`:
    give every row `accuracy`/`ci_low`/`ci_high` of the scorer being compared."""
    if f"{scorer}_accuracy" not in row:
        return row
    return row | {k: row[f"{scorer}_{k}"] for k in ("accuracy", "ci_low", "ci_high")}


def read_dataset(directory: Path, scorer: str) -> DatasetResult:
    """One dataset's results (hook layout or evaluate.py layout)."""
    metrics_file = directory / "metrics.json"
    if not metrics_file.exists():
        raise ResultsError(f"{metrics_file} is missing")
    m = json.loads(metrics_file.read_text())
    if "scorers" in m:  # evaluate.py, training hook
        scored = m["scorers"].get(scorer)
        fingerprint = (m.get("question_set") or {}).get("fingerprint") or m.get("fingerprint")
    else:  # training hook before name_likelihood: {"likelihood": {...}}
        scored = m.get(scorer)
        fingerprint = m.get("fingerprint")
    if scored is None:
        raise ResultsError(f"{metrics_file} has no results for scorer {scorer!r}")
    correct: dict[str, bool] = {}
    preds = directory / "predictions.jsonl"
    if preds.exists():
        for line in preds.read_text().splitlines():
            if not line.strip():
                continue
            p = json.loads(line)
            if p.get("scorer") == scorer and p.get("shift", 0) == 0:
                correct[p["qid"]] = bool(p["correct"])
    per_class = []
    pc = directory / "per_class.csv"
    if pc.exists():
        with open(pc, newline="", encoding="utf-8") as fh:
            per_class = [_for_scorer(row, scorer) for row in csv.DictReader(fh)]
    hard = scored.get("hard_accuracy")
    return DatasetResult(
        dataset=m.get("dataset", directory.name),
        scorer=scorer,
        accuracy=_accuracy(scored["accuracy"], metrics_file),
        hard=_accuracy(hard, metrics_file) if hard else None,
        fingerprint=fingerprint,
        correct=correct,
        per_class=per_class,
        source=directory,
    )


_STEP = re.compile(r"^step_(\d+)$")


def find_eval_dir(run: Path) -> Path | None:
    """`<run>/eval/step_<N>` with the largest N, else `run` itself if it holds dataset results."""
    steps = []
    if (run / "eval").is_dir():
        steps = [
            (int(m.group(1)), p)
            for p in (run / "eval").iterdir()
            if (m := _STEP.match(p.name)) and p.is_dir()
        ]
    if steps:
        return max(steps)[1]
    if any((d / "metrics.json").exists() for d in run.iterdir() if d.is_dir()):
        return run
    return None


def read_run(run: Path, scorer: str = "likelihood") -> RunResult:
    run = Path(run)
    config_file = run / "config.yaml"
    config_text = config_file.read_text() if config_file.exists() else ""
    config = yaml.safe_load(config_text) if config_text else {}
    curves = []
    if (run / "metrics.jsonl").exists():
        curves = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    result = RunResult(run, _axes(config or {}), config_text, curves)
    result.eval_dir = find_eval_dir(run)
    if result.eval_dir is not None:
        for d in sorted(p for p in result.eval_dir.iterdir() if p.is_dir()):
            if (d / "metrics.json").exists():
                ds = read_dataset(d, scorer)
                result.datasets[ds.dataset] = ds
    if not config_text and not result.datasets:
        raise ResultsError(f"{run} holds neither a run (config.yaml) nor evaluation results")
    return result


def discover_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`: each path is a run, or a grid holding runs below it."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ResultsError(f"{p} is not a directory")
        if (p / "config.yaml").exists() or find_eval_dir(p) is not None and not _has_runs(p):
            runs.append(p)
            continue
        found = sorted(c.parent for c in p.rglob("config.yaml") if ".launch" not in c.parts)
        if not found:
            raise ResultsError(f"{p}: no run directories (config.yaml) below it")
        runs += found
    return runs


def _has_runs(p: Path) -> bool:
    return any(p.rglob("config.yaml"))


def label_runs(runs: list[RunResult]) -> None:
    """Name each run by the axes that differ between them (`llm=qwen2,data=si32m`)."""
    differing = [a for a in AXES if len({r.axes.get(a) for r in runs}) > 1]
    for r in runs:
        parts = [f"{a}={r.axes[a]}" for a in differing if a in r.axes]
        r.label = ",".join(parts) or r.path.name
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # same axes (e.g. two seeds): fall back to paths
        for r in runs:
            r.label = f"{r.label} ({r.path.name})" if r.label != r.path.name else str(r.path)
