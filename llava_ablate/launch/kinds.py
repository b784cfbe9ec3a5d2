"""The kinds of grid, one implementation each of one small interface (`GridKind`): how its file
reads, what its jobs are, how they are planned and which multiruns submit them.

- a training grid (launch/grid.py, `launch/llm_x_data.yaml`): axes x stages of `train.py`
  jobs, and its evaluation stages' `evaluate.py` jobs, each after its own training job;
- an evaluation grid (launch/evalgrid.py, `kind: evaluate`, `launch/paper_models.yaml`):
  models x datasets x distractor strategies of `evaluate.py` jobs.

Written once against the interface: `llava-ablate plan` and `--dry-run` (launch/plan_any.py),
submission and its Slurm chaining (launch/submit.py), a job's status (launch/planning.py) and
the Slurm requests sized from the plan (launch/requests.py). A kind's evaluation jobs are
planned and launched by the same two functions here, whichever kind declared them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from llava_ablate.launch.evalgrid import (
    EVAL_KIND,
    EvalGridSpec,
    EvalJob,
    evaluation_grid,
    evaluation_overrides,
    expand_eval_grid,
    expand_eval_stages,
)
from llava_ablate.launch.evalplan import ModelScale, format_eval_plan, plan_eval_jobs
from llava_ablate.launch.grid import GridSpec, Job, expand, training_grid
from llava_ablate.launch.local_jobs import TRAIN_APP
from llava_ablate.launch.plan import check_identities, format_plan, plan_grid
from llava_ablate.launch.units import (
    EVAL_APP,
    EvalUnit,
    Launch,
    make_eval_units,
    make_units,
    numbered_launches,
    sweep_slug,
    unit_overrides,
)

Grid = GridSpec | EvalGridSpec


class GridKind(Protocol):
    """What differs between kinds of grid. `extra`: the command line's Hydra overrides."""

    def load(self, raw: DictConfig, path: Path, runs_root: str | None) -> Grid: ...

    def expand(self, grid) -> tuple[list[Job], list[EvalJob]]: ...  # (training, evaluation)

    def plan(self, grid, extra: list[str]) -> tuple[list[Job], list[EvalJob], str]: ...

    def check(self, grid, jobs: list[Job], extra: list[str]) -> None: ...  # before submitting

    def launches(
        self, grid, jobs: list[Job], evals: list[EvalJob], extra: list[str], root: Path
    ) -> list[Launch]: ...  # the unfinished jobs' multiruns, in order, sweep dirs under `root`


class TrainingGrid:
    def load(self, raw: DictConfig, path: Path, runs_root: str | None) -> GridSpec:
        return training_grid(raw, path, runs_root)

    def expand(self, grid: GridSpec) -> tuple[list[Job], list[EvalJob]]:
        jobs = expand(grid)
        return jobs, expand_eval_stages(grid, jobs)

    def plan(self, grid: GridSpec, extra: list[str]) -> tuple[list[Job], list[EvalJob], str]:
        rows = plan_grid(grid, extra)
        jobs = [r.job for r in rows]  # their identities are checked: not composed again
        evals = expand_eval_stages(grid, jobs)
        text = format_plan(grid, rows)
        if evals:  # exports that do not exist yet are as large as their jobs' plans say
            scale = {id(r.job): ModelScale(float(r.size.params), r.size.image_tokens, "its plan")
                     for r in rows}  # fmt: skip
            stages = ", ".join(s.name for s in grid.eval_stages)
            title = f"evaluation stage {stages}"
            text += "\n\n" + evaluation_plan(grid, evals, evaluation_overrides(extra), title, scale)
        return jobs, evals, text

    def check(self, grid: GridSpec, jobs: list[Job], extra: list[str]) -> None:
        check_identities(grid, jobs, extra)  # "finished" only for a run of today's config

    def launches(
        self, grid: GridSpec, jobs: list[Job], evals: list[EvalJob], extra: list[str], root: Path
    ) -> list[Launch]:
        train = numbered_launches(
            make_units(jobs),
            TRAIN_APP,
            root,
            lambda unit: unit.stage,
            lambda unit, sweep_dir: unit_overrides(unit, grid, sweep_dir) + list(extra),
        )
        # The command line is train.py's: its evaluations get only what evaluate.py takes.
        eval_extra = evaluation_overrides(extra)
        return train + evaluation_launches(grid, evals, eval_extra, root, len(train), True)


class EvaluationGrid:
    def load(self, raw: DictConfig, path: Path, runs_root: str | None) -> EvalGridSpec:
        return evaluation_grid(raw, path, runs_root)

    def expand(self, grid: EvalGridSpec) -> tuple[list[Job], list[EvalJob]]:
        return [], expand_eval_grid(grid)

    def plan(self, grid: EvalGridSpec, extra: list[str]) -> tuple[list[Job], list[EvalJob], str]:
        _, evals = self.expand(grid)
        title = f"grid {grid.name}" + (f" -- {grid.description}" if grid.description else "")
        text = evaluation_plan(grid, evals, list(extra), title)
        root = evals[0].results_root if evals else grid.name
        base = f" --baseline {grid.baseline}" if grid.baseline else ""
        text += "\ntables, once it has run: " + "; ".join(
            f"llava-ablate report {root / d}{base} --out {grid.name}_{d}.html"
            for d in grid.stage.distractors
        )
        return [], evals, text

    def check(self, grid, jobs, extra) -> None:
        """Nothing composed to compare: an evaluation job is finished when its metrics.json
        exists (evaluate.py records no run identity), unlike a training grid's runs."""

    def launches(self, grid, jobs, evals: list[EvalJob], extra, root: Path) -> list[Launch]:
        return evaluation_launches(grid, evals, list(extra), root)


KINDS: dict[str, GridKind] = {GridSpec.kind: TrainingGrid(), EVAL_KIND: EvaluationGrid()}


def kind_for(raw: object) -> GridKind:
    """The kind a grid's YAML declares (`kind: evaluate`); a training grid without it (its
    loader refuses any other `kind` as an unknown key)."""
    if isinstance(raw, DictConfig) and raw.get("kind") == EVAL_KIND:
        return KINDS[EVAL_KIND]
    return KINDS[GridSpec.kind]


def kind_of(grid: Grid) -> GridKind:
    return KINDS[grid.kind]


def evaluation_plan(
    grid: Grid,
    evals: list[EvalJob],
    extra: list[str],
    title: str,
    scale: dict[int, ModelScale] | None = None,
) -> str:
    """Evaluation jobs planned (their requests set) and their table: an evaluation grid's, or
    a training grid's evaluation stages' (`scale`: id(training job) -> its export's size)."""
    rows = plan_eval_jobs(evals, list(grid.launcher), extra, grid.gpu, grid.mfu, scale)
    return format_eval_plan(title, rows, grid.gpu, grid.mfu)


def evaluation_launches(
    grid: Grid,
    evals: list[EvalJob],
    extra: list[str],
    root: Path,
    start: int = 0,
    stage_named: bool = False,
) -> list[Launch]:
    """One `evaluate.py -m` per unit (launch/units.py make_eval_units). `stage_named`: its
    sweep directory names the stage too -- a training grid's evaluation stages are told apart
    by it; an evaluation grid has one stage, and its directories name only the model."""

    def sweep_name(unit: EvalUnit) -> str:
        return f"{unit.stage}-{sweep_slug(unit)}" if stage_named else sweep_slug(unit)

    return numbered_launches(
        make_eval_units(evals),
        EVAL_APP,
        root,
        sweep_name,
        lambda unit, sweep_dir: unit.overrides(list(grid.launcher), sweep_dir) + extra,
        start,
    )
