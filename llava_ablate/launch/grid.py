"""Named ablation grids (`launch/<name>.yaml`) expanded into the jobs they run.

A grid sweeps *axes* (Hydra overrides: config groups such as `llm`, or keys such as
`recipe.lr.vision`) as a product, through one or more *stages*. A stage may depend on only some
axes (`vary`): LLaVA's stage 1 aligns a projector per (vision, LLM) and does not care which
instruction data stage 2 uses, so a 2 LLM x 2 data grid has 2 stage-1 jobs and 4 stage-2 jobs,
each stage-2 job starting from (and waiting for) the stage-1 job of its own LLM.

Run directories derive from the varied axes -- `runs/<grid>/<stage>/llm=qwen2,data=si32m` -- so
relaunching a grid skips finished variants and resumes unfinished ones. Every key a grid varies
is in the name; the rest of the config is held by the run's `run_identity.json`, whose hash also
names its W&B run and its report row (llava_ablate/run_identity.py). Before anything is
submitted, every job whose directory already holds a run is composed and compared with that
record (launch/plan.py `check_identities`): "finished" means exported *and* of the config the
grid composes now; after an edit of the grid's `common` or stage overrides the launch is
refused, naming the jobs and keys (allow a deliberate change with
`train.allow_config_change=[...]`, or rename the grid for separate runs).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from llava_ablate.config import CONF_DIR, CONF_MODULE, ConfigError
from llava_ablate.eval_config import DISTRACTORS
from llava_ablate.launch.requests import Request
from llava_ablate.run_identity import RunIdentity

# Grids are the config group `grid` (conf/grid links to launch/), so ours ship in the package and
# a user's `<folder>/grid/<name>.yaml` is found through `hydra.searchpath` like any config.
GRID_GROUP = "grid"
EXPORT_MARKER = "export/COMPLETE"  # written last by llava_ablate/model/export.py


@dataclass(frozen=True)
class StageSpec:
    name: str
    overrides: tuple[str, ...] = ()
    vary: tuple[str, ...] | None = None  # the grid axes this stage depends on; None = all
    after: str | None = None  # an earlier stage: wait for it, start from its export


@dataclass(frozen=True)
class EvalStageSpec:
    """What an evaluation (a grid of kind `evaluate`, or a training grid's eval stage) scores."""

    name: str
    datasets: tuple[str, ...]
    distractors: tuple[str, ...] = ("random",)
    overrides: tuple[str, ...] = ()  # evaluate.py overrides for every job of the stage
    after: str | None = None  # training grids: the stage whose exports are scored
    shards: int = 1  # >1: each (model, dataset) split over this many array tasks, then merged


@dataclass(frozen=True)
class GridSpec:
    kind: ClassVar[str] = "train"  # launch/kinds.py KINDS
    name: str
    axes: dict[str, tuple[str, ...]]  # axis -> values, in the order given
    stages: tuple[StageSpec, ...]
    common: tuple[str, ...] = ()  # overrides every job gets
    launcher: tuple[str, ...] = ()  # hydra/launcher=... and hydra.launcher.* overrides
    description: str = ""
    gpu: str = "a100-80gb"  # for the plan's memory check and GPU-hours
    mfu: float = 0.4  # model FLOPs utilisation assumed for GPU-hours
    runs_root: str = "runs"
    eval_stages: tuple[EvalStageSpec, ...] = ()  # score a stage's exports (launch/evalgrid.py)


@dataclass
class Job:
    grid: str
    stage: str
    axes: dict[str, str]  # the stage's varied axes -> value
    common: list[str]  # the grid's overrides for every job
    stage_overrides: list[str]  # the stage's own (and the hand-over from its parent)
    run_dir: Path
    parent: Job | None = None
    # Jobs that wait for this one: later training stages' Jobs and evaluation stages' EvalJobs.
    children: list = field(default_factory=list)
    # Set by launch/plan.py check_identities: the directory holds this job's config (or none).
    identity: RunIdentity | None = None
    # Set by launch/plan.py: the Slurm request sized from the plan (launch/requests.py).
    request: Request | None = None

    @property
    def name(self) -> str:
        """`llm=qwen2,data=si32m`: the run's directory name and W&B run name."""
        return ",".join(f"{k}={v}" for k, v in self.axes.items()) or self.stage

    @property
    def overrides(self) -> list[str]:
        """Hydra overrides, without run_dir / W&B naming."""
        return [*self.common, *(f"{a}={v}" for a, v in self.axes.items()), *self.stage_overrides]

    @property
    def finished(self) -> bool:
        """Exported by a run of the config this job composes now (never on the export alone)."""
        if not (self.run_dir / EXPORT_MARKER).exists():
            return False
        if self.identity is None:
            raise RuntimeError(
                f"{self.run_dir}: exported, but its recorded config was not compared with the "
                "job's; call llava_ablate.launch.plan.check_identities(grid, jobs, extra) first"
            )
        return True

    def progress(self) -> str | None:
        """An unfinished run's latest complete checkpoint, `resume@<step>`; None: none."""
        from llava_ablate.train.checkpoint import latest_complete

        latest = latest_complete(self.run_dir / "checkpoints")
        return f"resume@{int(latest.name.split('_')[1])}" if latest else None

    def wandb_name(self, single_stage: bool) -> str:
        return self.name if single_stage else f"{self.stage}/{self.name}"

    def all_overrides(self, single_stage: bool) -> list[str]:
        """Everything `train.py` needs to run exactly this job (values quoted for Hydra)."""
        return [
            *self.overrides,
            f"train.run_dir={quote(str(self.run_dir))}",
            f"wandb.group={quote(self.grid)}",
            f"wandb.name={quote(self.wandb_name(single_stage))}",
        ]


def quote(value: str) -> str:
    """Hydra override value: quoted when it holds the grammar's special characters."""
    if any(c in value for c in ",=[]{}()'\" :"):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def read_grid(name: str, overrides: Sequence[str] = ()) -> tuple[DictConfig, Path]:
    """A grid's YAML and where it came from: `name` is a grid file, or a grid in the config
    group `grid` on Hydra's search path -- ours (launch/) and the folders a
    `hydra.searchpath=[...]` among `overrides` adds."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return OmegaConf.load(path), path
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    searchpath = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        known = loader.get_group_options(GRID_GROUP, overrides=searchpath)
        if name not in known:
            raise ConfigError(
                f"no grid named {name!r} on the config search path; known grids: {known}. A grid "
                f"of your own: a YAML file path, or {GRID_GROUP}/<name>.yaml in a folder added "
                "with hydra.searchpath=[file:///abs/folder]"
            )
        # Selected as an option of its group, not as the primary config: Hydra looks a primary
        # config up before hydra.searchpath extends the search path.
        raw = compose(config_name=None, overrides=[f"+{GRID_GROUP}={name}", *searchpath])
    # As written: Hydra's struct flag off, interpolations unresolved (like OmegaConf.load).
    grid = OmegaConf.create(OmegaConf.to_container(raw[GRID_GROUP]))
    return grid, Path(GRID_GROUP, f"{name}.yaml")


def string_list(node, where: str) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node, (list, ListConfig)):
        raise ConfigError(f"{where} must be a list of Hydra overrides, got {node!r}")
    # Unresolved: an interpolation (`${paths.data_root}`) belongs to the composed job config.
    items = OmegaConf.to_container(node, resolve=False) if isinstance(node, ListConfig) else node
    return tuple(str(x) for x in items)


def dataset_names(node, where: str) -> tuple[str, ...]:
    names = string_list(node, where)
    if not names:
        raise ConfigError(f"{where} has no datasets")
    known = sorted(p.stem for p in (CONF_DIR / "eval" / "datasets").glob("*.yaml"))
    for n in names:
        if n not in known:
            raise ConfigError(f"{where}: {n!r} is not in conf/eval/datasets/; known: {known}")
    return names


# An arm beside the distractor strategies: the protocol sweep (evaluate.py eval=protocol).
PROTOCOL_ARM = "protocol"


def distractor_names(node, where: str) -> tuple[str, ...]:
    values = string_list(node, where) or ("random",)
    allowed = [*DISTRACTORS, PROTOCOL_ARM]
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{where}: {v!r} is neither a distractor strategy nor the "
                              f"protocol arm; {allowed}")  # fmt: skip
    return values


def shard_count(node, where: str) -> int:
    if node is None:
        return 1
    if isinstance(node, bool) or not isinstance(node, int) or node < 1:
        raise ConfigError(f"{where}={node!r}: a number of array tasks per dataset, >= 1")
    return node


_EVAL_STAGE_KEYS = {"name", "datasets", "distractors", "overrides", "after", "shards"}


def eval_stage(node: DictConfig, where: str) -> EvalStageSpec:
    """A training grid's stage with `datasets`: scores every export of stage `after`
    (expanded by llava_ablate/launch/evalgrid.py)."""
    extra = set(node.keys()) - _EVAL_STAGE_KEYS
    if extra:
        raise ConfigError(f"{where} has unknown keys {sorted(extra)}; an evaluation stage "
                          f"takes {sorted(_EVAL_STAGE_KEYS)}")  # fmt: skip
    if not node.get("after"):
        raise ConfigError(f"{where}: an evaluation stage needs `after: <training stage>`")
    return EvalStageSpec(
        name=str(node.name),
        datasets=dataset_names(node.get("datasets"), f"{where}.datasets"),
        distractors=distractor_names(node.get("distractors"), f"{where}.distractors"),
        overrides=string_list(node.get("overrides"), f"{where}.overrides"),
        after=str(node.after),
        shards=shard_count(node.get("shards"), f"{where}.shards"),
    )


_GRID_KEYS = {"name", "description", "axes", "stages", "common", "launcher", "gpu", "mfu"}
_STAGE_KEYS = {"name", "overrides", "vary", "after"}  # a training stage


def grid_settings(raw: DictConfig, path: Path, runs_root: str | None) -> dict[str, Any]:
    """What every kind of grid declares the same way: its name, the overrides every job gets,
    the launcher's, and what the plan assumes (GPU, MFU); and where its runs go."""
    return dict(
        name=str(raw.get("name") or path.stem),
        common=string_list(raw.get("common"), f"{path}: common"),
        launcher=string_list(raw.get("launcher"), f"{path}: launcher"),
        description=str(raw.get("description") or ""),
        gpu=str(raw.get("gpu") or GridSpec.gpu),
        mfu=float(raw.get("mfu") or GridSpec.mfu),
        runs_root=runs_root or GridSpec.runs_root,
    )


def load_grid(name: str, runs_root: str | None = None, overrides: Sequence[str] = ()) -> GridSpec:
    """`overrides`: the command line's, for the `hydra.searchpath` that finds a user's grid."""
    return training_grid(*read_grid(name, overrides), runs_root)


def training_grid(raw, path: Path, runs_root: str | None = None) -> GridSpec:
    """A training grid from its YAML (read_grid's)."""
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a grid is a mapping with axes and stages")
    unknown = set(raw.keys()) - _GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed {sorted(_GRID_KEYS)}")
    axes = {str(k): string_list(v, f"{path}: axes.{k}") for k, v in (raw.get("axes") or {}).items()}
    for axis, values in axes.items():
        if not values:
            raise ConfigError(f"{path}: axes.{axis} has no values")
    stages, eval_stages = [], []
    for i, s in enumerate(raw.get("stages") or OmegaConf.create([{"name": "train"}])):
        if s.get("datasets") is not None:  # scores the exports of stage `after`
            ev = eval_stage(s, f"{path}: stages[{i}]")
            if ev.after not in [st.name for st in stages]:
                raise ConfigError(f"{path}: stages[{i}].after={ev.after!r} is not an earlier "
                                  f"training stage ({[st.name for st in stages]})")  # fmt: skip
            eval_stages.append(ev)
            continue
        extra = set(s.keys()) - _STAGE_KEYS
        if extra:
            raise ConfigError(f"{path}: stages[{i}] has unknown keys {sorted(extra)}")
        vary = None if s.get("vary") is None else string_list(s.vary, f"{path}: stages[{i}].vary")
        for axis in vary or ():
            if axis not in axes:
                raise ConfigError(
                    f"{path}: stages[{i}].vary names {axis!r}, not one of the axes {list(axes)}"
                )
        after = s.get("after")
        if after is not None and after not in [st.name for st in stages]:
            raise ConfigError(
                f"{path}: stages[{i}].after={after!r} is not an earlier stage "
                f"({[st.name for st in stages]})"
            )
        stages.append(
            StageSpec(str(s.name), string_list(s.get("overrides"), f"stages[{i}]"), vary, after)
        )
    names = [s.name for s in stages] + [s.name for s in eval_stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stage names must be unique, got {names}")
    return GridSpec(
        axes=axes,
        stages=tuple(stages),
        eval_stages=tuple(eval_stages),
        **grid_settings(raw, path, runs_root),
    )


def expand(grid: GridSpec) -> list[Job]:
    """Every job of the grid, parents before children; jobs shared by variants appear once."""
    jobs: dict[tuple[str, tuple], Job] = {}
    order: list[Job] = []
    axis_names = list(grid.axes)
    single = len(grid.stages) == 1
    for combo in itertools.product(*grid.axes.values()):
        values = dict(zip(axis_names, combo, strict=True))
        by_stage: dict[str, Job] = {}
        for stage in grid.stages:
            varied = stage.vary if stage.vary is not None else tuple(axis_names)
            axes = {a: values[a] for a in axis_names if a in varied}
            key = (stage.name, tuple(axes.items()))
            job = jobs.get(key)
            if job is None:
                parent = by_stage[stage.after] if stage.after else None
                name = ",".join(f"{k}={v}" for k, v in axes.items()) or stage.name
                run_dir = Path(grid.runs_root) / grid.name / ("" if single else stage.name) / name
                own = list(stage.overrides)
                if parent is not None:
                    own.append(f"recipe.init_from={quote(str(parent.run_dir / 'export'))}")
                job = Job(grid.name, stage.name, axes, list(grid.common), own, run_dir, parent)
                if parent is not None:
                    parent.children.append(job)
                jobs[key] = job
                order.append(job)
            elif stage.after and job.parent is not by_stage[stage.after]:
                raise ConfigError(
                    f"grid {grid.name}: stage {stage.name!r} job {job.name} would start from two "
                    f"different {stage.after!r} jobs; add the axes that differ to its `vary`"
                )
            by_stage[stage.name] = job
    return order
