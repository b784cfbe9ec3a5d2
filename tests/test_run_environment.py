"""What a run ran on is recorded beside its results (run directory, model card, metrics.json), a
resume on other software warns, and a report flags rows produced by different software."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import transformers
from test_report import _args, _report_data, _write_run

from llava_ablate import run_environment
from llava_ablate.run_environment import (
    RECORD,
    current_environment,
    environment_differences,
    record_run_environment,
)

from conftest import ROOT, compose_config


def test_the_environment_names_the_commit_python_and_libraries():
    env = current_environment()
    assert env["transformers"] == transformers.__version__
    assert env["torch"].startswith("2.") and env["python"].count(".") == 2
    assert env["deepspeed"] and env["peft"] and env["webdataset"] and env["hydra-core"]
    assert env["accelerator"] and env["hosts"] == 1
    if (ROOT / ".git").exists():  # a checkout: its commit, and whether it has changes
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        assert env["commit"] == head and isinstance(env["dirty"], bool)
        assert ("diff_sha256" in env) == env["dirty"]
    json.dumps(env)  # goes into JSON files and the W&B config as it is


def test_recording_the_environment_leaves_the_run_identity_alone(tmp_path):
    from llava_ablate.run_identity import check_run_identity, config_hash, result_config

    run = tmp_path / "run"
    cfg = compose_config(["+experiment=tiny_align", f"train.run_dir={run}"])
    before = config_hash(result_config(cfg))
    record_run_environment(run)
    assert (run / RECORD).exists()
    assert check_run_identity(cfg, run, world_size=1).config_hash == before
    assert not any("environment" in k for k in result_config(cfg))


@pytest.fixture
def other_transformers(monkeypatch):
    """This process as if transformers 5.24.0 were installed (the record of a run started
    elsewhere)."""

    def use(version: str):
        env = {**current_environment(), "transformers": version}
        monkeypatch.setattr(run_environment, "current_environment", lambda: env)

    return use


def test_a_resume_on_other_software_warns_in_train_log_and_the_card(tmp_path, other_transformers):
    """claim_run_dir (the training run's own phase) on a run directory started with another
    transformers: train.log names the difference, environment.json keeps both, the model card
    says so."""
    from llava_ablate.base.distributed import DistInfo
    from llava_ablate.config import to_object
    from llava_ablate.model.card import render_model_card
    from llava_ablate.run_identity import check_run_identity
    from llava_ablate.train import run as train_run
    from llava_ablate.train.run_log import setup_run_logging

    run_dir = tmp_path / "run"
    dcfg = compose_config(["+experiment=tiny_align", f"train.run_dir={run_dir}"])

    def claim():
        ident = check_run_identity(dcfg, run_dir, world_size=1)
        run = train_run.Run(dcfg, to_object(dcfg), ident, DistInfo())
        train_run.claim_run_dir(run)
        return run

    other_transformers("5.24.0")
    claim()  # the first start, elsewhere
    now = transformers.__version__
    other_transformers(now)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_run_logging(run_dir, 0)
        run = claim()  # the resume
    finally:
        from llava_ablate.train import run_log

        run_log._file_handler.close()
        run_log._file_handler = None
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
        transformers.logging.disable_propagation()
        transformers.logging.enable_default_handler()
    log = (run_dir / "train.log").read_text()
    assert f"transformers 5.24.0 vs {now}" in log and "WARNING" in log
    record = json.loads((run_dir / RECORD).read_text())
    assert record["environment"]["transformers"] == "5.24.0"  # what it started with
    (change,) = record["resumed_with_changes"]
    assert change["changes"] == [f"transformers 5.24.0 vs {now}"]
    assert change["environment"]["transformers"] == now

    info = train_run._environment_info(run)  # what the export's llava_ablate.json carries
    card = render_model_card(_card_info(info), [], "run")
    assert "## Software" in card and "| transformers | 5.24.0 |" in card
    assert f"**Warning:** resumed on other software than it started with: transformers 5.24.0 vs {now}" in card  # fmt: skip

    claim()  # a second resume on the same software as the first resume: compared with the start
    assert len(json.loads((run_dir / RECORD).read_text())["resumed_with_changes"]) == 2


def _card_info(extra: dict) -> dict:
    variant = {
        "vision": {"name": "tiny_clip"}, "llm": {"name": "tiny_qwen2"},
        "projector": {"type": "mlp2x_gelu"}, "data": {"name": "toy", "sources": []},
        "recipe": {"name": "align", "global_batch_size": 8, "micro_batch_size": 2},
    }  # fmt: skip
    return {"variant": variant, "steps": 4, "tokens": 10, **extra}


def test_differences_name_each_key_and_an_absent_one():
    old = {"transformers": "5.24.0", "deepspeed": "0.19.8", "torch": "2.13.0"}
    new = {"transformers": "5.25.0", "deepspeed": "0.19.8", "torch": "2.13.0", "cuda": "13.0"}
    diff = environment_differences(old, new)
    assert run_environment.describe(diff) == [
        "cuda absent vs 13.0",
        "transformers 5.24.0 vs 5.25.0",
    ]


# --- reports -------------------------------------------------------------------------------------


def _with_environment(run: Path, **changes) -> None:
    env = {**current_environment(), **changes}
    (run / RECORD).write_text(json.dumps({"environment": env, "resumed_with_changes": []}))


@pytest.fixture
def two_versions(tmp_path):
    """Two runs of a grid that differ in their llm axis and, beyond it, only in the recorded
    transformers version."""
    rng = np.random.default_rng(5)
    grid = tmp_path / "grid"
    p = {"digits": 0.6}
    a, _ = _write_run(grid, "tiny_llama", rng, p)
    b, _ = _write_run(grid, "tiny_qwen2", rng, p)
    _with_environment(a, transformers="5.24.0")
    _with_environment(b, transformers="5.25.0")
    return grid


def test_a_report_flags_rows_that_differ_only_in_a_package_version(two_versions, tmp_path, capsys):
    from llava_ablate.report.command import report_command

    out = tmp_path / "report.html"
    report_command(_args([str(two_versions)], out=str(out), exposure=None, title=None,
                         wandb=False, strict_env=False))  # fmt: skip
    line = "transformers 5.24.0 vs 5.25.0 (5.24.0: tiny_llama; 5.25.0: tiny_qwen2)"
    assert line in capsys.readouterr().out  # the terminal
    assert line in (tmp_path / "report.md").read_text()  # the tables' notes
    assert line.replace("_", r"\_") in (tmp_path / "report.tex").read_text()
    html = out.read_text()
    assert line in html and "<code>transformers 5.24.0</code>" in html  # notes, the run's section
    data = _report_data(html)["variants"]
    assert data["tiny_llama"]["env_differs"] == {"transformers": "5.24.0"}
    assert data["tiny_qwen2"]["environment"]["transformers"] == "5.25.0"
    assert "deepspeed" not in data["tiny_llama"]["env_differs"]  # the same: not listed

    with pytest.raises(SystemExit, match=r"--strict-env: .*transformers 5.24.0 vs 5.25.0"):
        report_command(_args([str(two_versions)], out=str(out), exposure=None, title=None,
                             wandb=False, strict_env=True))  # fmt: skip


def test_strict_env_passes_same_software_and_refuses_unrecorded_rows(two_versions, tmp_path):
    from llava_ablate.report.command import build

    _with_environment(two_versions / "llm=tiny_qwen2", transformers="5.24.0", accelerator="H100")
    runs, _, _ = build(_args([str(two_versions)], strict_env=True))  # hardware: listed only
    assert [list(r.env_differs) for r in runs] == [["accelerator"], ["accelerator"]]
    assert runs[1].env_differs == {"accelerator": "H100"}
    (two_versions / "llm=tiny_qwen2" / RECORD).unlink()  # a run from before the record
    with pytest.raises(Exception, match="no environment recorded for tiny_qwen2"):
        build(_args([str(two_versions)], strict_env=True))


def test_evaluation_results_record_their_environment(tmp_path):
    """evaluate.py's summary metrics.json carries the environment; the report reads it for an
    evaluation-only row."""
    from llava_ablate.eval.results import write_summary
    from llava_ablate.report.environment import read_environment

    write_summary(tmp_path, "m", {"digits": {"accuracy": 0.5}})
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["environment"] == current_environment()
    assert read_environment(tmp_path) == current_environment()
