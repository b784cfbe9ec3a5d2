"""Logs where users look (issue 17 §3): `train.log` in the run directory, a refused re-run that
leaves the run directory as it was, one rank prefix on errors, sweep records under the runs
root. The end-to-end checks are in test_multirun.py and test_train_e2e.py."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose_config

TINY = ["+experiment=tiny_finetune", "recipe.init_from=null", "wandb.enabled=false"]


@pytest.fixture
def restore_logging():
    """setup_run_logging replaces the root handlers and redirects the libraries' loggers."""
    import transformers

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    deepspeed_handlers = list(logging.getLogger("DeepSpeed").handlers)
    yield
    from llava_ablate.train import run_log

    if run_log._file_handler is not None:
        run_log._file_handler.close()
        run_log._file_handler = None
    for handler in logging.getLogger("DeepSpeed").handlers:
        if handler not in deepspeed_handlers:
            handler.close()
    logging.getLogger("DeepSpeed").handlers[:] = deepspeed_handlers
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    transformers.logging.disable_propagation()
    transformers.logging.enable_default_handler()


def test_train_log_holds_rank0_info_every_ranks_warnings_and_errors(tmp_path, restore_logging):
    import transformers

    from llava_ablate.train.run_log import log_failure, log_start, setup_run_logging

    def attempt(rank: int) -> None:
        setup_run_logging(tmp_path, rank)
        log_start(tmp_path, "cafe1234")
        logging.getLogger("llava_ablate.train").info(f"info from rank {rank}")
        logging.getLogger("llava_ablate.data").warning(f"warning from rank {rank}")
        warnings.warn(f"python warning from rank {rank}", UserWarning, stacklevel=1)
        transformers.logging.get_logger("transformers.x").warning(f"hf warning from rank {rank}")
        logging.getLogger("DeepSpeed").warning(f"deepspeed warning from rank {rank}")
        try:
            raise ValueError(f"boom on rank {rank}")
        except ValueError as e:
            log_failure(e)

    attempt(0)
    attempt(1)  # the same file: another rank, or a resumed attempt of the run
    text = (tmp_path / "train.log").read_text()
    for rank in (0, 1):
        for what in ("warning", "python warning", "hf warning", "deepspeed warning"):
            assert f"rank{rank} WARNING" in text and f"{what} from rank {rank}" in text, what
        assert f"ValueError: boom on rank {rank}" in text  # with its traceback
    assert "info from rank 0" in text and "info from rank 1" not in text  # INFO: rank 0 only
    assert text.count("command: ") == 1 and "config hash cafe1234" in text  # rank 0 heads it
    assert "Traceback (most recent call last)" in text


def test_a_second_process_group_in_one_process_prefixes_errors_once(world_of_one):
    """`[rank0]: [rank0]:` on every line of a multirun's errors: torch wraps sys.excepthook at
    each init_process_group, and the wrapper outlived the group."""
    from llava_ablate.base.distributed import init_distributed, shutdown_distributed

    hook = sys.excepthook
    try:
        for _ in range(2):  # two jobs in one process
            init_distributed(timeout_s=60)
            shutdown_distributed()
        init_distributed(timeout_s=60)
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            try:
                raise RuntimeError("job failed")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
            printed = sys.stderr.getvalue()
        finally:
            sys.stderr = stderr
        shutdown_distributed()
    finally:
        sys.excepthook = hook
    lines = [line for line in printed.splitlines() if line]
    assert lines and all(line.startswith("[rank0]: ") for line in lines), printed
    assert "[rank0]: [rank0]:" not in printed, printed


@pytest.fixture
def hydra_config_reset():
    """Tests that set Hydra's global job config leave none behind for the next test."""
    from hydra.core.hydra_config import HydraConfig

    yield
    HydraConfig.instance().cfg = None


def _digests(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_refused_rerun_leaves_the_run_directory_untouched(tmp_path):
    """A run directory holding seed 1's run; the same directory with seed 2 is refused, and
    Hydra's records of the run (`hydra/*.yaml`, written before the task starts) are not
    overwritten with the refused config."""
    from llava_ablate.run_identity import check_run_identity, record_run_identity

    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, "train.seed=1", f"train.run_dir={run_dir}"])
    record_run_identity(cfg, run_dir, check_run_identity(cfg, run_dir, world_size=1))
    (run_dir / "hydra").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):  # as the first run left them
        (run_dir / "hydra" / name).write_text(OmegaConf.to_yaml(cfg) + f"# {name}\n")
    (run_dir / "train.log").write_text("the first run's log\n")
    before = _digests(run_dir)
    env = {**os.environ, "LLAVA_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "train.seed=2", f"train.run_dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "holds a run of another result-affecting config" in proc.stderr
    assert "train.seed: 1 -> 2" in proc.stderr
    assert _digests(run_dir) == before  # nothing written, nothing added


def test_sweep_records_go_under_the_runs_root_with_readable_names(tmp_path, hydra_config_reset):
    """The sweep directory of a multirun: `<runs_root>/multirun/<time>`, one record per job
    named `<job number>-<run directory name>` -- an override with slashes
    (`train.runs_root=/tmp/x`) no longer makes nested directories."""
    from hydra.core.hydra_config import HydraConfig

    from llava_ablate.config import compose_config as compose

    runs = tmp_path / "my_runs" / "root"
    cfg = compose([*TINY, f"train.runs_root={runs}", "train.seed=3"], return_hydra_config=True)
    OmegaConf.update(cfg, "hydra.job.num", 7, force_add=True)
    HydraConfig.instance().set_config(cfg)
    sweep = Path(cfg.hydra.sweep.dir)
    subdir = str(cfg.hydra.sweep.subdir)
    assert sweep.parent == runs / "multirun", sweep
    assert "/" not in subdir
    assert subdir == f"7-{Path(cfg.train.run_dir).name}"
    assert Path(cfg.train.run_dir).parent == runs


def test_a_local_multirun_job_runs_as_its_own_single_run_command(tmp_path, hydra_config_reset):
    """The child of a multirun job (launch/local_jobs.py) gets the job's overrides and the
    user's Hydra overrides, without the sweep's own (mode, sweep dir, launcher)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from llava_ablate.config import ConfigError
    from llava_ablate.config import compose_config as compose
    from llava_ablate.launch.local_jobs import TRAIN_APP, in_process_sweep, job_command

    cfg = compose(
        [*TINY, "train.seed=2", f"hydra.searchpath=[file://{tmp_path}]",
         "hydra/launcher=slurm_cpu", "hydra.sweep.dir=/sweeps/x", "hydra.mode=MULTIRUN"],
        return_hydra_config=True,
    )  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    cmd = job_command()
    assert cmd[:3] == [sys.executable, "-m", TRAIN_APP]
    assert f"hydra.searchpath=[file://{tmp_path}]" in cmd and "train.seed=2" in cmd
    assert not [a for a in cmd if a.startswith(("hydra/launcher", "hydra.sweep", "hydra.mode"))]
    assert HydraConfig.get().mode == RunMode.MULTIRUN
    assert in_process_sweep("none") and not in_process_sweep("slurm")
    with pytest.raises(ConfigError, match="under torchrun"):
        in_process_sweep("torchrun")
