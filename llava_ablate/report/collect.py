"""Read what runs left on disk into typed records: the resolved config and its identity
(`config.yaml`, `run_identity.json`), the training curves (`metrics.jsonl`) and the evaluator's
results (`metrics.json`, `predictions.jsonl`, `per_class.csv` per dataset) -- from a training
run's `eval/step_<N>/` (the latest step) or from an `evaluate.py` results directory. Nothing here
computes a number the files do not hold.

`label_runs` names each run by the options of the axes that differ between the compared runs
(`small_qwen2 × demo_base`); the result-affecting keys that differ *beyond* the axes
(`recipe.max_steps`, ...) are kept in `differs` for a footnote or column, and enter a label only
where two variants would otherwise share it. `train.seed` is an axis of its own: runs that
differ only in it form one variant, aggregated in compare.py and tables.py. `grid_order` puts
the zero-shot baselines (evaluate.py `model.type=clip|siglip`) first, then the variants in the
grid's order: each axis's options in the order the runs were given, then alphabetically."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from llava_ablate.eval.results import METRICS, ResultsError, read_results
from llava_ablate.eval.stats import Estimate
from llava_ablate.report.environment import read_environment
from llava_ablate.run_identity import AXES, RECORD, axes_of, config_hash, flatten, result_config

SEED_KEY = "train.seed"
EVAL_MARKER = "run.json"  # evaluate.py's results directory (one model), llava_ablate/eval/run.py
# A zero-shot baseline answers the same multiple-choice questions by its most similar option
# (eval/baselines.py calls that scorer `likelihood`): its row when another scorer is compared.
ZERO_SHOT_SCORER = "likelihood"
AXIS_JOIN = " × "


@dataclass
class DatasetResult:
    dataset: str
    scorer: str
    accuracy: Estimate
    hard: Estimate | None
    fingerprint: str | None  # the frozen question set: paired comparisons need it equal
    correct: dict[str, bool]  # question id -> right? (unrotated predictions of `scorer`)
    per_class: list[dict]  # per_class.csv rows (class_name, n, hard, accuracy, ci_low, ci_high)
    source: Path  # the dataset's results directory
    labels: dict[str, str] = field(default_factory=dict)  # question id -> true class
    hard_classes: frozenset[str] = frozenset()  # per_class.csv's `hard` column
    image_aspect: str | None = None  # pad | native | processor (metrics.json); None: not recorded
    protocol: dict | None = None  # the protocol card (eval=protocol; eval/card.py)

    def hard_only(self) -> DatasetResult:
        """The same results restricted to the questions whose true class is hard."""
        keep = {q: c for q, c in self.correct.items() if self.labels.get(q) in self.hard_classes}
        return replace(self, correct=keep, accuracy=self.hard or self.accuracy)


@dataclass
class RunResult:
    path: Path
    axes: dict[str, str]  # axis -> option (llm=qwen2, ...), from config.yaml
    config_text: str  # the exact resolved config, as written by the run
    curves: list[dict]  # metrics.jsonl rows
    datasets: dict[str, DatasetResult] = field(default_factory=dict)
    eval_dir: Path | None = None
    config_hash: str | None = None  # run_identity.json's (or config.yaml's) result hash
    settings: dict[str, Any] = field(default_factory=dict)  # flattened result-affecting config
    zero_shot: str | None = None  # the model type of a CLIP/SigLIP zero-shot baseline (run.json)
    model_name: str = ""  # evaluate.py's model.name (metrics.json `model`), else ""
    # Set by `label_runs`:
    variant: str = ""  # the axes and keys that differ between the compared runs, seed aside
    label: str = ""  # `variant`, plus `seed=N` when the variant has several seeds
    differs: dict[str, Any] = field(default_factory=dict)  # keys beyond the axes -> this value
    environment: dict[str, Any] | None = None  # what it ran on (report/environment.py)
    env_differs: dict[str, str] = field(default_factory=dict)  # set by mark_environment

    @property
    def seed(self) -> Any:
        return self.settings.get(SEED_KEY)


def _accuracy(node: dict, where: Path) -> Estimate:
    try:
        return Estimate(float(node["value"]), float(node["ci_low"]), float(node["ci_high"]),
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
    """One dataset's results (eval/results.py: the training hook's, evaluate.py's, the
    lmms-eval bridge's)."""
    metrics_file = directory / METRICS
    m = read_results(directory)
    scored = m["scorers"].get(scorer)
    if scored is None:
        raise ResultsError(f"{metrics_file} has no results for scorer {scorer!r}")
    correct: dict[str, bool] = {}
    labels: dict[str, str] = {}
    preds = directory / "predictions.jsonl"
    if preds.exists():
        for line in preds.read_text().splitlines():
            if not line.strip():
                continue
            p = json.loads(line)
            if p.get("scorer") == scorer and p.get("shift", 0) == 0:
                correct[p["qid"]] = bool(p["correct"])
                labels[p["qid"]] = p.get("label")
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
        fingerprint=m["question_set"].get("fingerprint"),
        correct=correct,
        per_class=per_class,
        source=directory,
        labels=labels,
        hard_classes=frozenset(r["class_name"] for r in per_class if _true(r.get("hard"))),
        image_aspect=m.get("image_aspect"),
        protocol=m.get("protocol"),
    )


def _true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


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
    result = RunResult(run, axes_of(config or {}), config_text, curves)
    result.config_hash, result.settings = _identity(run, config)
    _seedless_lineage(result.settings, config or {})
    result.zero_shot, result.model_name = _zero_shot(run)
    result.environment = read_environment(run)
    result.eval_dir = find_eval_dir(run)
    if result.eval_dir is not None:
        for d in sorted(p for p in result.eval_dir.iterdir() if p.is_dir()):
            if (d / "metrics.json").exists():
                ds = read_dataset(d, _scorer_of(d, scorer) if result.zero_shot else scorer)
                result.datasets[ds.dataset] = ds
    if not config_text and not result.datasets:
        raise ResultsError(f"{run} holds neither a run (config.yaml) nor evaluation results")
    return result


def _zero_shot(run: Path) -> tuple[str | None, str]:
    """(model type, model name) of an evaluate.py results directory of a zero-shot baseline."""
    marker = run / EVAL_MARKER
    if not marker.exists():
        return None, ""
    try:
        kind = json.loads(marker.read_text()).get("model_type")
        summary = run / "metrics.json"
        name = json.loads(summary.read_text()).get("model", "") if summary.exists() else ""
    except json.JSONDecodeError as e:
        raise ResultsError(f"{marker} (or its metrics.json) is not JSON: {e}") from e
    return (None if kind in (None, "mllm") else str(kind)), str(name or "")


def _scorer_of(directory: Path, scorer: str) -> str:
    """The compared scorer where the zero-shot results hold it, else its option choice."""
    return scorer if scorer in read_results(directory)["scorers"] else ZERO_SHOT_SCORER


def discover_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`: each path is a run, or a grid holding runs below it."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ResultsError(f"{p} is not a directory")
        if not (p / EVAL_MARKER).exists() and not _has_runs(p):
            results = sorted(c.parent for c in p.rglob(EVAL_MARKER) if ".launch" not in c.parts)
            if results:  # evaluate.py results directories below: an evaluation grid's
                runs += results
                continue
        if (p / "config.yaml").exists() or find_eval_dir(p) is not None and not _has_runs(p):
            runs.append(p)
            continue
        found = sorted(c.parent for c in p.rglob("config.yaml")
                       if ".launch" not in c.parts and not _hydra_record(c))  # fmt: skip
        if not found:
            raise ResultsError(f"{p}: no run directories (config.yaml) below it")
        runs += found
    return runs


def _has_runs(p: Path) -> bool:
    return any(not _hydra_record(c) for c in p.rglob("config.yaml"))


def _hydra_record(config: Path) -> bool:
    """Hydra's own output subdir (config.yaml beside hydra.yaml): evaluate.py writes one into
    its results directory; it is not a run."""
    return (config.parent / "hydra.yaml").exists()


def _identity(run: Path, config: dict | None) -> tuple[str | None, dict[str, Any]]:
    """The run's hash and flattened result-affecting config: from run_identity.json, else
    computed from config.yaml the way the run itself would have (older runs)."""
    record = run / RECORD
    if record.exists():
        try:
            rec = json.loads(record.read_text())
            return rec.get("config_hash", rec["hash"]), flatten(rec["config"])
        except (json.JSONDecodeError, KeyError) as e:
            raise ResultsError(f"{record}: unreadable run identity ({e})") from e
    if not config:
        return None, {}
    part = result_config(OmegaConf.create(config))
    return config_hash(part), flatten(part)


INIT_KEY = "recipe.init_from"


def _seedless_lineage(settings: dict[str, Any], config: dict, depth: int = 0) -> None:
    """Replace `recipe.init_from` (a previous stage's export) by that run's own settings with
    the seed left out, when its run directory is on disk. Each seed of a two-stage arm starts
    from its own seed's stage 1, so the paths differ although the runs differ only in seed;
    the parent's other settings still count. An unresolvable path is kept as it is."""
    value = settings.get(INIT_KEY)
    if not isinstance(value, str) or depth > 8:
        return
    runs_root = str((config.get("train") or {}).get("runs_root") or "")
    path = Path(value.replace("${train.runs_root}", runs_root) if runs_root else value)
    parent = path.parent if path.name == "export" else path
    record = parent / RECORD
    if not record.exists():
        return
    try:
        rec = json.loads(record.read_text())
        parent_settings = flatten(rec["config"])
    except (json.JSONDecodeError, KeyError) as e:
        raise ResultsError(f"{record}: unreadable run identity ({e})") from e
    parent_config = yaml.safe_load((parent / "config.yaml").read_text()) \
        if (parent / "config.yaml").exists() else {}  # fmt: skip
    _seedless_lineage(parent_settings, parent_config or {}, depth + 1)
    parent_settings.pop(SEED_KEY, None)
    settings[INIT_KEY] = "run " + config_hash(parent_settings)  # no "/": a label may show it


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def differing_keys(runs: list[RunResult]) -> list[str]:
    """Result-affecting keys (seed aside) in which runs differ beyond their axes: a key under an
    axis group (`recipe.lr.llm`) counts when two runs with the same option of that axis differ
    in it; any other key (`train.*`, `eval.*`) when any two runs differ in it."""
    keys = sorted({k for r in runs for k in r.settings} - {SEED_KEY})
    out = []
    for k in keys:
        group = k.split(".")[0].split("[")[0]
        by_option: dict[Any, set[str]] = {}
        for r in runs:
            option = r.axes.get(group) if group in AXES else None
            by_option.setdefault(option, set()).add(_value(r.settings.get(k, "<absent>")))
        if any(len(values) > 1 for values in by_option.values()):
            out.append(k)
    return out


def label_runs(runs: list[RunResult]) -> None:
    """Name each run by the options of the axes that differ between the trained runs
    (`small_qwen2 × demo_base`) and each zero-shot baseline by its model (`mini_clip zero-shot`).
    Runs that differ only in `train.seed` share a variant. The keys beyond the axes go to
    `differs`; one enters a label only when variants would otherwise share it (then the label
    says the value that tells them apart, path-valued keys aside)."""
    trained = [r for r in runs if not r.zero_shot]
    differing = [a for a in AXES if len({r.axes.get(a) for r in trained}) > 1]
    beyond = differing_keys([r for r in runs if r.settings])
    for r in runs:
        r.differs = {k: r.settings.get(k, "<absent>") for k in beyond} if r.settings else {}
        if r.zero_shot:
            r.variant = f"{r.model_name or r.path.name} zero-shot"
            continue
        r.variant = AXIS_JOIN.join(r.axes[a] for a in differing if a in r.axes)
    _tell_apart(trained)
    for r in runs:
        r.variant = r.variant or r.path.name
    # One variant = one config up to the seed, each seed once. Anything else (a path-valued
    # key, no config at all, the same run twice) is told apart by its directory.
    _split(runs, lambda r: f"{r.variant} ({r.path.name})" if r.variant != r.path.name else "")
    _split(runs, lambda r: str(r.path))
    sizes: dict[str, int] = {}
    for r in runs:
        sizes[r.variant] = sizes.get(r.variant, 0) + 1
    for r in runs:
        r.label = f"{r.variant}, seed={r.seed}" if sizes[r.variant] > 1 else r.variant


def _tell_apart(runs: list[RunResult]) -> None:
    """Runs sharing an axis label but not their config (seed aside): add the keys beyond the
    axes whose values differ among them."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.variant, []).append(r)
    for members in groups.values():
        if len({_without_seed(r) for r in members}) < 2:
            continue
        keys = [k for k in members[0].differs
                if len({_value(r.differs.get(k)) for r in members}) > 1]  # fmt: skip
        for r in members:
            shown = [f"{k}={_value(r.differs[k])}" for k in keys if "/" not in _value(r.differs[k])]
            if shown:
                extra = ", ".join(shown)
                r.variant = f"{r.variant} ({extra})" if r.variant else extra


def grid_order(runs: list[RunResult]) -> list[RunResult]:
    """Zero-shot baselines first (as given), then the trained variants in the grid's order:
    each differing axis ordered by the order its options were first given (a grid directory's
    runs: alphabetically), ties by label; a variant's runs by seed. Call after label_runs."""
    rank: dict[str, dict[str, int]] = {}
    for r in runs:
        for axis, option in r.axes.items():
            rank.setdefault(axis, {}).setdefault(option, len(rank[axis]))
    first_variant: dict[str, int] = {}
    for i, r in enumerate(runs):
        first_variant.setdefault(r.variant, i)

    def key(r: RunResult):
        if r.zero_shot:
            return (0, first_variant[r.variant], (), "", _seed_key(r))
        options = tuple(rank[a].get(r.axes.get(a), -1) for a in AXES if a in rank)
        return (1, 0, options, r.variant, _seed_key(r))

    return sorted(runs, key=key)


def _seed_key(r: RunResult) -> tuple:
    return (r.seed is None, r.seed if isinstance(r.seed, int) else 0, str(r.seed))


def _split(runs: list[RunResult], rename) -> None:
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.variant, []).append(r)
    for members in groups.values():
        seeds = [r.seed for r in members]
        if len({_without_seed(r) for r in members}) > 1 or len(set(seeds)) < len(seeds):
            for r in members:
                r.variant = rename(r) or str(r.path)


def _without_seed(r: RunResult) -> str:
    if not r.settings:
        return str(r.path)
    return json.dumps({k: _value(v) for k, v in r.settings.items() if k != SEED_KEY},
                      sort_keys=True)  # fmt: skip
