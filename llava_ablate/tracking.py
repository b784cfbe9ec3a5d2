"""Weights & Biases logging that can never fail a run: a training run's (train/run.py) and an
evaluation's (eval/run.py; the training hook's numbers go through the training run's).

Offline mode is the default when no credentials are configured (and in tests); any W&B error
disables tracking with a warning. The files on disk stay the source of truth for reports
(`metrics.jsonl`, each evaluation's `metrics.json`), since W&B has no offline reader for its
`.wandb` files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from llava_ablate.run_identity import axes_of

log = logging.getLogger(__name__)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class Tracker:
    def __init__(
        self,
        *,
        enabled: bool,
        project: str,
        entity: str | None,
        group: str | None,
        name: str,
        run_dir: Path,
        config: dict,
        mode: str | None = None,
        run_id: str | None = None,  # stable per run directory (run_identity.RunIdentity)
        run_hash: str | None = None,  # the run's config hash: a top-level key to filter on
        environment: dict | None = None,  # the software it started on (run_environment.py)
        job_type: str | None = None,  # W&B's job type: "eval" for an evaluation
    ):
        self.run = None
        self._service = False  # wandb's service process was started: close it in finish()
        if not enabled:
            return
        mode = (
            mode or os.environ.get("WANDB_MODE") or ("online" if _has_credentials() else "offline")
        )
        try:
            import wandb

            self._service = True  # even an init that fails may have started it
            self.run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                name=name,
                dir=str(run_dir),
                config={
                    **axes_of(config),
                    "run_hash": run_hash,
                    "config": config,
                    "environment": environment or {},
                },
                mode=mode,
                job_type=job_type,
                id=run_id or _stable_id(run_dir),
                resume="allow",  # a resumed run continues its W&B run
                settings=wandb.Settings(silent=True),
            )
        except Exception as e:  # noqa: BLE001 - tracking must never take the run down
            log.warning("W&B disabled: %s", e)
            self.run = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """`step` None: W&B's own counter (an evaluation's datasets, one after another)."""
        self._safe(lambda: self.run.log(metrics, step=step))

    def log_table(self, key: str, rows: list[dict], step: int) -> None:
        if not rows:
            return

        def log_it():
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            self.run.log({key: table}, step=step)

        self._safe(log_it)

    def finish(self, exit_code: int = 0, *, preempted: bool = False) -> None:
        """Finish the run (`preempted`: marked so, to be resumed) and close the W&B service.

        A stop signal reaches the service too (Slurm signals every process of a job) and
        wandb-core shuts down on SIGTERM; the run then cannot be finished, and tearing the
        connection down here keeps wandb's exit hook from printing a ConnectionResetError
        traceback. `metrics.jsonl` holds every step either way.
        """
        if self.run is not None and preempted:
            self._safe(lambda: self.run.mark_preempting())
        self._safe(lambda: self.run.finish(exit_code=exit_code))
        self.run = None
        if not self._service:  # never started, or already closed
            return
        self._service = False
        try:
            import wandb

            wandb.teardown(exit_code)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a dead service is not our failure
            log.warning("the W&B service had already stopped (%s); metrics.jsonl has every step", e)

    def _safe(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B logging failed, disabling it: %s", e)
            self.run = None


def _stable_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
