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

slow = pytest.mark.slow  # the real-Slurm tests; the launcher's bookkeeping tests are fast


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


@slow
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


@slow
def test_two_stage_grid_chains_each_stage2_to_its_own_stage1(slurm, cache_dir, tmp_path):
    import eval_fixtures as fx

    data = tmp_path / "data"
    fx.digits_folder(data / "my_dataset", per_class=1)  # the evaluation stage's image folder
    cmd = [sys.executable, "-m", "llava_ablate.launch", "tiny_chain", "--runs-root", str(tmp_path),
           f"paths.data_root={data}"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = dict(re.findall(r"submitted (.+?): Slurm array (\d+)", proc.stdout))
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
        # The evaluation stage: after (afterok) and scoring its own stage-2 job's export.
        label = f"eval/{name}/random: image_folder"
        line = f"submitted {label}: Slurm array {ids[label]} after {ids[f'finetune/{name}']}"
        assert line in proc.stdout
        script = next(p for p in (grid / ".launch").glob("*-eval-*/.submitit/*/*_submission.sh")
                      if f"afterok:{ids[f'finetune/{name}']}\n" in p.read_text())  # fmt: skip
        result = grid / "eval" / "random" / name / "image_folder" / "metrics.json"
        metrics = json.loads(result.read_text())
        assert metrics["model"] == name and metrics["n_questions"] == 10
        assert (stage2 / "export/COMPLETE").stat().st_mtime <= result.stat().st_mtime


def _fake_squeue(tmp_path: Path, monkeypatch, output: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '{output}'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_launcher_counts_a_requeued_job_as_pending(tmp_path, monkeypatch):
    from llava_ablate.launch.submit import unit_outcome

    _fake_squeue(tmp_path, monkeypatch, "PENDING\\nRUNNING\\n")
    state, failed = unit_outcome(1, "12", tmp_path / "launcher.log")
    assert not failed and state.startswith("pending in Slurm (PENDING, RUNNING)")
    assert unit_outcome(0, "12", tmp_path / "launcher.log") == ("finished", False)


def test_launcher_counts_a_job_gone_from_the_queue_as_failed(tmp_path, monkeypatch):
    from llava_ablate.launch.submit import unit_outcome

    _fake_squeue(tmp_path, monkeypatch, "")
    state, failed = unit_outcome(1, "12", tmp_path / "launcher.log")
    assert failed and state.startswith("FAILED (exit 1")


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


def _log_text(sweep: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").glob("*/*_log.*"))


def _restarts(job: str) -> int:
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    m = re.search(r"Restarts=(\d+)", info)
    return int(m.group(1)) if m else -1


@slow
def test_requeued_job_checkpoints_and_resumes_at_the_exact_step(slurm, cache_dir, tmp_path):
    """`scontrol requeue` of a running job with DataLoader workers (SIGTERM to every process of
    the job: ranks, workers, the W&B service), then Slurm's time-limit warning (USR1) on the
    next attempt: each time every rank checkpoints and the job goes back to the queue, the
    launcher keeps waiting instead of reporting a failure, and the next attempt resumes at
    exactly the checkpointed step."""
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "+experiment=tiny_align",
        "hydra/launcher=slurm_cpu", "recipe.max_steps=400", "train.log_every=1",
        "train.save_every=1000", "data.num_workers=2", f"train.run_dir={run}",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    job = None
    metrics = run / "metrics.jsonl"

    def steps_logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def stops() -> list[int]:
        found = re.findall(r"stop requested at step (\d+)", _log_text(sweep))
        return sorted({int(m) for m in found})  # every rank logs it

    try:
        _wait(lambda: steps_logged() >= 20, 300, "20 training steps", proc)
        job = _wait(
            lambda: next((p.name for p in (sweep / ".submitit").iterdir()
                          if re.fullmatch(r"\d+", p.name)), None), 30, "the job id")  # fmt: skip
        t0 = time.monotonic()
        subprocess.run(["scontrol", "requeue", job], check=True)  # what preemption does
        first = _wait(lambda: stops()[:1], 60, "the checkpoint after SIGTERM", proc)[0]
        _wait(lambda: _restarts(job) == 1 and _squeue_state(job)[0] == "RUNNING", 120,
              "the requeued job to start again", proc)  # fmt: skip
        # The hold before a requeued job may start again: AuthInfo=cred_expire and a short
        # sched_interval in slurm_up.sh (Slurm's defaults: 120 s, then the next 60 s pass).
        assert time.monotonic() - t0 < 45
        _wait(lambda: steps_logged() >= first + 20, 300, "20 more steps", proc)
        # Slurm's warning before the time limit: the job requeues itself (launch/task.py).
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:] if proc.stdout else ""
    finally:
        if proc.poll() is None:
            if job:
                subprocess.run(["scancel", job], check=False)
            os.killpg(proc.pid, 9)
    logs = _log_text(sweep)
    assert len(stops()) == 2, logs[-3000:]
    first, second = stops()
    for step in (first, second):
        assert re.search(rf"resumed from \S+step_{step:08d} at step {step}\b", logs), logs[-3000:]
    assert 20 <= first < second < 400
    assert "requeued: it will resume from its checkpoint" in logs  # the USR1 attempt's own
    assert "killed by signal" not in logs  # DataLoader workers left the signal to the rank
    assert "Exception ignored in atexit" not in logs  # W&B's service closed, not abandoned
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, 401))  # no gap, no repeat: each attempt went on exactly
    assert (run / "export/COMPLETE").exists()
    assert _restarts(job) == 2


def test_master_port_is_per_job_and_below_the_ephemeral_range():
    """Every task of a job derives the same rendezvous port, outside the range the kernel hands
    to outgoing connections (submitit's 20000-60000 overlaps it: EADDRINUSE on rank 0 was seen
    in CI while rank 1 waited)."""
    from pathlib import Path

    from llava_ablate.launch.slurm import EPHEMERAL_RANGE, master_port

    low = int(Path(EPHEMERAL_RANGE).read_text().split()[0])
    ports = {job: master_port(job) for job in (f"{n}_{t}" for n in range(200) for t in range(3))}
    assert all(20000 <= p < low for p in ports.values())
    assert master_port("26_0") == master_port("26_0")
    assert len(set(ports.values())) > 500  # jobs spread over the range
