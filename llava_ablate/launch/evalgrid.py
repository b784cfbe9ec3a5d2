"""Evaluation grids: models x datasets x distractor strategies, one `evaluate.py` job each.

Two places declare them:
- a grid file of `kind: evaluate` (`launch/paper_models.yaml`): named `models` (hub ids,
  directories, our exports, `type: clip|siglip` baselines), `datasets` (conf/eval/datasets
  options) and `distractors` (strategies, and the `protocol` arm: the protocol card's sweep);
- an evaluation stage of a training grid (`launch/llm_x_data.yaml`): a stage with `datasets`
  and `after: <training stage>` scores each of that stage's exports, each job waiting for its
  own training job (afterok).

Every (model, distractors) pair has one results directory, with one sub-directory per dataset
(`evaluate.py`'s layout, read by `llava-ablate report`):
  <runs_root>/<grid>/[<stage>/]<distractors>/<model>/<dataset>/{metrics.json,predictions.jsonl}
and all models of a grid answer the same frozen question files (`.../questions/`). A job is
finished when its dataset's metrics.json exists; a re-submitted unfinished job resumes
(evaluate.py skips the questions already predicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from omegaconf import DictConfig

from llava_ablate.config import ConfigError
from llava_ablate.eval_config import MODEL_TYPES, ModelCfg
from llava_ablate.launch.grid import (
    PROTOCOL_ARM,
    EvalStageSpec,
    GridSpec,
    Job,
    dataset_names,
    distractor_names,
    grid_settings,
    quote,
    read_grid,
    shard_count,
)
from llava_ablate.launch.requests import Request

EVAL_KIND = "evaluate"
_MODEL_KEYS = set(ModelCfg.__dataclass_fields__) - {"name"}


@dataclass(frozen=True)
class EvalModel:
    """A row of the table: a name and the `model.*` values evaluate.py gets."""

    name: str
    fields: dict[str, str]  # model.<key> -> value (path, type, templates, image_aspect, ...)

    @property
    def overrides(self) -> list[str]:
        return [f"model.name={quote(self.name)}",
                *(f"model.{k}={quote(str(v))}" for k, v in self.fields.items())]  # fmt: skip

    @property
    def type(self) -> str:
        return self.fields.get("type", "mllm")

    @property
    def path(self) -> str:
        return self.fields["path"]


@dataclass(frozen=True)
class EvalGridSpec:
    kind: ClassVar[str] = EVAL_KIND  # launch/kinds.py KINDS
    name: str
    models: tuple[EvalModel, ...]
    stage: EvalStageSpec
    common: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    description: str = ""
    gpu: str = "a100-80gb"
    mfu: float = 0.4
    runs_root: str = "runs"
    baseline: str | None = None  # the row the table marks and tests against


@dataclass
class EvalJob:
    grid: str
    stage: str
    model: str  # row label
    model_overrides: list[str]
    dataset: str
    distractors: str
    results_root: Path  # <runs_root>/<grid>/[<stage>/]: <distractors>/<model>/ below it
    common: list[str]
    parent: Job | None = None  # training grids: the job whose export this scores
    shards: int = 1  # >1: array tasks each score a part, then one merge job scores the whole
    request: Request | None = None  # set by launch/evalplan.py (launch/requests.py)

    @property
    def out_dir(self) -> Path:
        return self.results_root / self.distractors / self.model

    @property
    def questions_dir(self) -> Path:
        return self.results_root / "questions"

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}/{self.distractors}"

    @property
    def finished(self) -> bool:
        return (self.out_dir / self.dataset / "metrics.json").exists()

    def progress(self) -> str | None:
        """`resume (<n> predicted)` when an unfinished job has predictions; None: none."""
        directory = self.out_dir / self.dataset
        done = sum(
            len(f.read_text().splitlines()) for f in directory.glob("predictions*.jsonl")
        ) if directory.is_dir() else 0  # fmt: skip
        return f"resume ({done} predicted)" if done else None

    def base_overrides(self) -> list[str]:
        """Everything but the dataset: what one Slurm array of this model shares."""
        arm = (
            ["eval=protocol"]  # the sweep over the frozen random questions (eval/protocol.py)
            if self.distractors == PROTOCOL_ARM
            else [f"eval.questions.distractors={self.distractors}"]
        )
        return [
            *self.common,
            *self.model_overrides,
            *arm,
            f"eval.questions.dir={quote(str(self.questions_dir))}",
            f"out_dir={quote(str(self.out_dir))}",
        ]

    @property
    def overrides(self) -> list[str]:
        return [*self.base_overrides(), f"eval/datasets=[{self.dataset}]"]


def _model(name: str, node, where: str) -> EvalModel:
    if not isinstance(node, (dict, DictConfig)):
        raise ConfigError(f"{where}.{name} must be a mapping with at least `path`")
    fields = {str(k): str(v) for k, v in node.items()}
    unknown = set(fields) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}.{name}: unknown keys {sorted(unknown)}; allowed "
                          f"{sorted(_MODEL_KEYS)} (evaluate.py's model.*)")  # fmt: skip
    if "path" not in fields:
        raise ConfigError(f"{where}.{name} has no `path` (a hub id or a directory)")
    if fields.get("type", "mllm") not in MODEL_TYPES:
        raise ConfigError(f"{where}.{name}.type={fields['type']!r}; choose from {MODEL_TYPES}")
    return EvalModel(name, fields)


_GRID_KEYS = {"name", "kind", "description", "models", "datasets", "distractors", "common",
              "launcher", "gpu", "mfu", "baseline", "shards"}  # fmt: skip


def load_eval_grid(
    name: str, runs_root: str | None = None, overrides: list[str] | None = None
) -> EvalGridSpec:
    return evaluation_grid(*read_grid(name, list(overrides or [])), runs_root)


def evaluation_grid(raw: DictConfig, path: Path, runs_root: str | None = None) -> EvalGridSpec:
    """An evaluation grid (`kind: evaluate`) from its YAML (read_grid's)."""
    unknown = set(raw.keys()) - _GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed {sorted(_GRID_KEYS)}")
    models_node = raw.get("models")
    if not isinstance(models_node, DictConfig) or not models_node:
        raise ConfigError(f"{path}: `models` must map row names to {{path: ..., type: ...}}")
    models = tuple(_model(str(k), v, f"{path}: models") for k, v in models_node.items())
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in [m.name for m in models]:
        raise ConfigError(f"{path}: baseline={baseline!r} is not one of the models "
                          f"{[m.name for m in models]}")  # fmt: skip
    return EvalGridSpec(
        models=models,
        stage=EvalStageSpec(
            name=EVAL_KIND,
            datasets=dataset_names(raw.get("datasets"), f"{path}: datasets"),
            distractors=distractor_names(raw.get("distractors"), f"{path}: distractors"),
            shards=shard_count(raw.get("shards"), f"{path}: shards"),
        ),
        baseline=None if baseline is None else str(baseline),
        **grid_settings(raw, path, runs_root),
    )


def expand_eval_grid(grid: EvalGridSpec) -> list[EvalJob]:
    """One job per (model, dataset, distractors), model by model."""
    root = Path(grid.runs_root) / grid.name
    return [
        EvalJob(grid.name, grid.stage.name, m.name, m.overrides, d, strategy, root,
                list(grid.common), shards=grid.stage.shards)
        for m in grid.models
        for strategy in grid.stage.distractors
        for d in grid.stage.datasets
    ]  # fmt: skip


def expand_eval_stages(grid: GridSpec, jobs: list[Job]) -> list[EvalJob]:
    """The evaluation stages of a training grid: every export of stage `after` on every
    dataset and distractor strategy, each job after (and scoring) its own training job."""
    out = []
    for stage in grid.eval_stages:
        root = Path(grid.runs_root) / grid.name / stage.name
        for parent in (j for j in jobs if j.stage == stage.after):
            model = [f"model.name={quote(parent.name)}",
                     f"model.path={quote(str(parent.run_dir / 'export'))}"]  # fmt: skip
            for strategy in stage.distractors:
                for d in stage.datasets:
                    job = EvalJob(grid.name, stage.name, parent.name, model, d, strategy, root,
                                  list(stage.overrides), parent=parent,
                                  shards=stage.shards)  # fmt: skip
                    # A training job with evaluations waiting is an array of its own (as one
                    # with later training stages): each evaluation waits for its own job only.
                    if not any(c is job for c in parent.children):
                        parent.children.append(job)
                    out.append(job)
    return out


_TRAIN_ONLY = {"llm", "vision", "projector", "data", "recipe", "deepspeed", "train", "wandb",
               "experiment"}  # fmt: skip


def evaluation_overrides(extra: list[str]) -> list[str]:
    """A training grid's command-line overrides that its evaluation jobs get too: the
    launcher's and evaluate.py's (`eval.*`, `paths.*`), not train.py's own groups."""

    def key(o: str) -> str:
        return o.lstrip("+~").split("=", 1)[0].split(".")[0].split("/")[0]

    return [o for o in extra if key(o) not in _TRAIN_ONLY]
