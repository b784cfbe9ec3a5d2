"""What the plans of both kinds of grid share (launch/kinds.py): a job's config composed with
its Hydra launcher, the resources that launcher gives it, the job's status column and the
plain-text table the rows are printed in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict

from llava_ablate.config import ConfigError, compose_config
from llava_ablate.launch.evalgrid import EvalJob
from llava_ablate.launch.grid import Job


@dataclass
class Resources:
    launcher: str  # the hydra/launcher choice
    nodes: int
    tasks_per_node: int
    gpus_per_node: int | None
    timeout_min: int
    partition: str | None
    account: str | None
    qos: str | None

    @property
    def world(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * (self.gpus_per_node or 0)


def resources(launcher: DictConfig) -> Resources:
    """A launcher node (compose_with_launcher's) as the resources each job of it gets."""
    get = launcher.get
    return Resources(
        launcher=str(get("choice")),
        nodes=int(get("nodes", 1) or 1),
        tasks_per_node=int(get("tasks_per_node", 1) or 1),
        gpus_per_node=get("gpus_per_node"),
        timeout_min=int(get("timeout_min", 0) or 0),
        partition=get("partition"),
        account=get("account"),
        qos=get("qos"),
    )


def compose_with_launcher(
    overrides: Sequence[str], config_name: str, where: str
) -> tuple[DictConfig, DictConfig]:
    """`conf/<config_name>.yaml` composed as the job's app (train.py: `config`, evaluate.py:
    `evaluate`) will compose it -- without the `hydra` node, so the DictConfig train.py hashes
    (run_identity.result_config) -- and that node's launcher, unresolved, with its `choice`.
    Hydra's errors name the bad override; `where` names the job."""
    try:
        dcfg = compose_config(overrides, config_name, return_hydra_config=True)
    except Exception as e:
        raise ConfigError(f"{where}: {e}") from e
    launcher = OmegaConf.create(OmegaConf.to_container(dcfg.hydra.launcher, resolve=False))
    launcher.choice = dcfg.hydra.runtime.choices.get("hydra/launcher")
    with open_dict(dcfg):
        del dcfg["hydra"]
    return dcfg, launcher


def job_status(job: Job | EvalJob) -> str:
    """The plan's status column: finished, what an unfinished job resumes from (its kind's
    `progress`: a checkpoint, predictions), or new."""
    if job.finished:
        return "finished"
    return job.progress() or "new"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
