"""Real Slurm (one node, started by .ci/slurm_up.sh): a 2x2 grid of tiny variants through the
Hydra Slurm launcher, each job 2 DeepSpeed tasks; and a job that is signalled before its time
limit checkpoints, requeues itself and resumes from that checkpoint, not from step 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm() -> None:
    """Start (or find) the local Slurm; CI sets LLAVA_REQUIRE_SLURM=1 so it can never skip."""
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci/slurm_up.sh")], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        msg = f"no local Slurm ({proc.stdout[-500:]} {proc.stderr[-1500:]})"
        if os.environ.get("LLAVA_REQUIRE_SLURM"):
            pytest.fail(msg)
        pytest.skip(msg + "; run .ci/slurm_up.sh as root")


def _env(cache_dir: Path) -> dict:
    return {
        **os.environ,
        "LLAVA_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_tiny_2x2_grid_runs_on_slurm_and_relaunch_skips(slurm, cache_dir, tmp_path):
    cmd = [sys.executable, "-m", "llava_ablate.launch", "tiny_2x2", "--runs-root", str(tmp_path)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted train/4 jobs: Slurm array" in proc.stdout  # one array, one multirun
    names = [f"llm={m},vision={v}" for m in ("tiny_llama", "tiny_qwen2")
             for v in ("tiny_clip", "tiny_siglip")]  # fmt: skip
    for name in names:
        run = tmp_path / "tiny_2x2" / name
        assert (run / "export/COMPLETE").exists(), name
        assert [r["step"] for r in read_metrics(run)][-1] == 8
        ds = json.loads((run / "deepspeed.json").read_text())
        # global 8 = micro 4 x accum 1 x 2 ranks: each job really was 2 DeepSpeed tasks
        assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (8, 1)
        config = (run / "config.yaml").read_text()
        assert "group: tiny_2x2" in config and f"name: {name}" in config
    script = next((tmp_path / "tiny_2x2/.launch").glob("*/.submitit/*/*_submission.sh"))
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --signal=USR1@30" in text
    assert "#SBATCH --requeue" in text and "#SBATCH --array=0-3" in text

    again = subprocess.run(
        cmd, cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 jobs, 0 to run, 4 finished" in again.stdout
    assert "nothing to submit" in again.stdout


def test_two_stage_grid_chains_each_stage2_to_its_own_stage1(slurm, cache_dir, tmp_path):
    cmd = [sys.executable, "-m", "llava_ablate.launch", "tiny_chain", "--runs-root", str(tmp_path)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = dict(re.findall(r"submitted (\S+): Slurm array (\d+)", proc.stdout))
    grid = tmp_path / "tiny_chain"
    for llm in ("tiny_llama", "tiny_qwen2"):
        name = f"llm={llm},vision=tiny_clip"
        stage1, stage2 = grid / "align" / name, grid / "finetune" / name
        line = f"submitted finetune/{name}: Slurm array {ids[f'finetune/{name}']} after "
        assert line + ids[f"align/{name}"] in proc.stdout
        script = next(p for p in (grid / ".launch").glob("*-finetune/.submitit/*/*_submission.sh")
                      if f"afterok:{ids[f'align/{name}']}\n" in p.read_text())  # fmt: skip
        assert "#SBATCH --kill-on-invalid-dep=yes" in script.read_text()
        config = (stage2 / "config.yaml").read_text()
        assert f"init_from: {stage1 / 'export'}" in config  # its own stage 1, not the other
        # It waited: stage 1 had exported before stage 2 wrote its first file.
        assert (stage1 / "export/COMPLETE").stat().st_mtime <= (
            stage2 / "config.yaml"
        ).stat().st_mtime
        assert (stage2 / "export/COMPLETE").exists()


def _squeue_state(job: str) -> tuple[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True
    ).stdout.strip()
    return tuple(out.split("|")) if out else ("", "")  # type: ignore[return-value]


def _wait(cond, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launcher ended while waiting for {what}:\n{proc.stdout.read()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_signalled_job_requeues_and_resumes_from_its_checkpoint(slurm, cache_dir, tmp_path):
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "+experiment=tiny_align",
        "hydra/launcher=slurm_cpu", "recipe.max_steps=300", "train.log_every=1",
        "train.save_every=1000", f"train.run_dir={run}", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        metrics = run / "metrics.jsonl"
        _wait(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 20,
              300, "20 training steps", proc)  # fmt: skip
        job = _wait(
            lambda: next((p.name for p in (sweep / ".submitit").iterdir()
                          if re.fullmatch(r"\d+", p.name)), None), 30, "the job id")  # fmt: skip
        # What Slurm does `signal_delay_s` before the time limit (or a preempting scheduler).
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        # Slurm holds a requeued batch job for ~2 minutes before it may start again; on this
        # idle test node, release it at once instead of waiting.
        _wait(lambda: _squeue_state(job) == ("PENDING", "BeginTime"), 120, "the requeue", proc)
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
        assert proc.wait(timeout=600) == 0
    finally:
        if proc.poll() is None:
            subprocess.run(["scancel", job], check=False)
            os.killpg(proc.pid, 9)
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_0_log.err"))
    m = re.search(r"stop requested at step (\d+)", logs)
    assert m, logs[-3000:]
    stopped = int(m.group(1))
    assert "requeued: it will resume from its checkpoint" in logs
    assert re.search(rf"resumed from \S+step_{stopped:08d} at step {stopped}\b", logs), logs[-3000:]
    assert 0 < stopped < 300
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, 301))  # no gap, no repeat: it went on from the checkpoint
    assert (run / "export/COMPLETE").exists()
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in info
