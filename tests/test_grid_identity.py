"""A relaunched grid skips a job as finished only when its run directory holds a run of the
config the grid composes now; a job whose recorded config differs (the grid's `common` or stage
overrides were edited) is refused before anything is submitted, naming the job and the keys.

No training: the finished runs are faked with run_identity's own writer (the record train.py
writes) from the job's composed config, plus the export marker."""

from __future__ import annotations

import subprocess

import pytest

from llava_ablate.launch.__main__ import main as launch_main
from llava_ablate.launch.grid import expand, load_grid
from llava_ablate.launch.submit import submit_grid
from llava_ablate.launch.units import make_units
from llava_ablate.run_identity import RunConfigMismatch, check_run_identity, record_run_identity

from conftest import compose_config

GRID = """
name: gid
axes:
  llm: [tiny_llama, tiny_qwen2]
common: [recipe.max_steps={steps}]
stages:
  - {name: align, vary: [llm], overrides: [+experiment=tiny_align]}
  - {name: finetune, after: align, overrides: [+experiment=tiny_finetune{extra}]}
"""


def _grid(tmp_path, extra: str = "", steps: int = 6):
    path = tmp_path / "gid.yaml"
    path.write_text(GRID.replace("{extra}", extra).replace("{steps}", str(steps)))
    return str(path)


def _fake_run(job, grid, *, exported: bool = True) -> None:
    """What train.py leaves in a job's run directory: config.yaml + run_identity.json (its own
    writer, from the config the job composes; the basic launcher runs one rank) and, once
    finished, export/COMPLETE."""
    dcfg = compose_config([*job.all_overrides(len(grid.stages) == 1), *grid.launcher])
    record_run_identity(dcfg, job.run_dir, check_run_identity(dcfg, job.run_dir, world_size=1))
    if exported:
        (job.run_dir / "export").mkdir(parents=True)
        (job.run_dir / "export/COMPLETE").touch()


@pytest.fixture
def no_submit(monkeypatch):
    """Nothing may be launched: a refused grid stops before any train.py starts."""

    def popen(*args, **kwargs):
        raise AssertionError(f"a job was submitted: {args[0]}")

    monkeypatch.setattr(subprocess, "Popen", popen)


def _finish_all(path: str, runs) -> None:
    grid = load_grid(path, runs_root=str(runs))
    for job in expand(grid):
        _fake_run(job, grid)


def test_finished_jobs_of_the_same_config_are_skipped(tmp_path, no_submit, capsys):
    runs = tmp_path / "runs"
    path = _grid(tmp_path)
    _finish_all(path, runs)
    assert launch_main([path, "--runs-root", str(runs), "--no-plan"]) == 0
    assert "every job is finished; nothing to submit" in capsys.readouterr().out


def test_finished_jobs_of_a_changed_grid_are_refused_naming_job_and_keys(
    tmp_path, no_submit, capsys
):
    runs = tmp_path / "runs"
    _finish_all(_grid(tmp_path), runs)
    changed = _grid(tmp_path, ", recipe.lr.llm=1e-4")  # a stage's overrides edited
    for flag in ("--no-plan", "--dry-run"):
        assert launch_main([changed, "--runs-root", str(runs), flag]) == 2, flag
        err = capsys.readouterr().err
        assert "grid gid: 2 of 4 jobs" in err and "nothing was submitted" in err, err
        for llm in ("tiny_llama", "tiny_qwen2"):
            assert f"job finetune/llm={llm}: {runs}/gid/finetune/llm={llm} holds" in err
        assert "job align/" not in err  # stage 1 is unchanged: still finished
        assert "recipe.lr.llm: 0.001 -> 0.0001" in err
        assert "train.allow_config_change=[recipe.lr.llm]" in err
        assert err.rstrip().splitlines()[-1].startswith("To ")  # the advice is the last line

    # The documented escape: a deliberate change, allowed by key -> skipped as finished.
    allow = "train.allow_config_change=[recipe.lr.llm]"
    assert launch_main([changed, allow, "--runs-root", str(runs), "--no-plan"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def test_unfinished_job_of_a_changed_grid_is_refused_before_submitting(tmp_path, no_submit):
    """train.py would refuse it too, but only once Slurm ran it (after its stage 1)."""
    runs = tmp_path / "runs"
    grid = load_grid(_grid(tmp_path), runs_root=str(runs))
    _fake_run(expand(grid)[0], grid, exported=False)  # align/llm=tiny_llama, interrupted
    changed = load_grid(_grid(tmp_path, steps=9), runs_root=str(runs))  # `common` edited
    with pytest.raises(
        RunConfigMismatch, match=r"(?s)job align/llm=tiny_llama: .*max_steps: 6 -> 9"
    ):
        submit_grid(changed, expand(changed), [])


def test_finished_is_not_answered_before_the_identity_check(tmp_path):
    """`Job.finished` never answers on the export alone for a directory holding a run."""
    grid = load_grid(_grid(tmp_path), runs_root=str(tmp_path / "runs"))
    _fake_run(expand(grid)[0], grid)
    with pytest.raises(RuntimeError, match="check_identities"):
        make_units(expand(grid))
