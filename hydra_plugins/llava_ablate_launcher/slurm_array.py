"""Hydra's submitit Slurm launcher, telling whoever started it which Slurm jobs it submitted.

`python -m llava_ablate.launch` chains a grid's stages with Slurm dependencies: it needs each
array's job id as soon as sbatch has returned, while this launcher goes on waiting for the
jobs. So, right after submitting, it writes submitit's own `job.job_id`s to
`<sweep dir>/slurm_jobs.json` (`llava_ablate/launch/submit.py` reads it). A dependency is
submitit's own `dependency` parameter: `+hydra.launcher.dependency=afterok:<id>`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from llava_ablate.base.files import atomic_write
from llava_ablate.launch.slurm import JOB_IDS_FILE

log = logging.getLogger(__name__)


class SlurmArrayLauncher(SlurmLauncher):
    def executor(self):
        """submitit's executor with this launcher's parameters (what every sbatch script of
        the array says: its time limit, GPUs, tasks...); as hydra-submitit-launcher 1.2."""
        import submitit

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        init_keys = {"submitit_folder", "max_num_timeout"}
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        return executor

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        # As hydra-submitit-launcher 1.2's `launch`, plus the record of the job ids.
        assert self.config is not None and len(job_overrides) > 0
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        with atomic_write(sweep_dir / JOB_IDS_FILE) as tmp:
            tmp.write_text(json.dumps([job.job_id for job in jobs]))
        return [job.results()[0] for job in jobs]
