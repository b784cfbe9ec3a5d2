"""Scale-out (issue 17 §6): the rank wiring of a multi-node Slurm step, on paper (a simulated
2-node x 8-task allocation) and for real (two "nodes" on localhost, each a launch of train.py
with its own SLURM_* environment, through the same code path: detect the step, export
torch.distributed's variables, rendezvous, train one step)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_metrics

# What a launch must not inherit from this process: another launcher's ranks or job.
_LAUNCH_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_KEYS and not k.startswith(("SLURM_", "SUBMITIT_"))
    }


def _step_env(job_id: str, nodelist: str, nodes: int, tasks_per_node: int, rank: int):
    """The variables `srun` gives task `rank` of a step spread over `nodes` nodes."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % tasks_per_node),
        "SLURM_NODEID": str(rank // tasks_per_node),
    }


def test_two_nodes_of_eight_tasks_get_one_master_and_slurms_ranks():
    from llava_ablate.base.scheduler import detect_scheduler, launched_world_size
    from llava_ablate.launch.slurm import export_distributed_env, master_port

    saved = dict(os.environ)
    seen = []
    try:
        for rank in range(16):
            os.environ.clear()
            os.environ.update(_clean_env() | _step_env("81234", "gpu[07-08]", 2, 8, rank))
            assert detect_scheduler() == "slurm" and launched_world_size() == 16
            env = export_distributed_env()
            seen.append(
                {
                    k: os.environ[k]
                    for k in (
                        "MASTER_ADDR",
                        "MASTER_PORT",
                        "RANK",
                        "LOCAL_RANK",
                        "WORLD_SIZE",
                        "LOCAL_WORLD_SIZE",
                    )
                }  # fmt: skip
            )
            assert (env.rank, env.local_rank, env.world) == (rank, rank % 8, 16)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert {s["MASTER_ADDR"] for s in seen} == {"gpu07"}  # the first node of the allocation
    assert {s["MASTER_PORT"] for s in seen} == {str(master_port("81234"))}  # one port
    assert [int(s["RANK"]) for s in seen] == list(range(16))  # RANK = SLURM_PROCID
    assert [int(s["LOCAL_RANK"]) for s in seen] == [r % 8 for r in range(16)]  # = SLURM_LOCALID
    assert {s["WORLD_SIZE"] for s in seen} == {"16"}
    assert {s["LOCAL_WORLD_SIZE"] for s in seen} == {"8"}


def _job_with_a_free_port() -> str:
    """A job id whose rendezvous port (derived from it, as on a cluster) is free here."""
    from llava_ablate.launch.slurm import master_port

    for n in range(900001, 900200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", master_port(str(n))))
            except OSError:
                continue
        return str(n)
    raise AssertionError("no free port among 200 job ids")


@pytest.mark.slow  # two training processes on 2 cores: ~1 min
def test_two_node_rendezvous_on_localhost_trains_one_step(tmp_path, cache_dir):
    job = _job_with_a_free_port()
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "+experiment=tiny_align",
           "recipe.max_steps=1", "train.log_every=1", "wandb.enabled=false",
           "train.dist_timeout_s=300", f"train.run_dir={run_dir}"]  # fmt: skip
    base = _clean_env() | {
        "LLAVA_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    nodes = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=base | _step_env(job, "localhost,127.0.0.1", 2, 1, rank),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = []
    try:
        for proc in nodes:
            outs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    for rank, (proc, out) in enumerate(zip(nodes, outs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{out[-5000:]}"
    assert "2 tasks, master localhost:" in outs[0]
    assert "x 1 accum x 2 ranks" in outs[0]  # the global batch of 8 spans both nodes
    assert [row["step"] for row in read_metrics(run_dir)] == [1]
    assert (run_dir / "export" / "COMPLETE").exists()
    identity = json.loads((run_dir / "run_identity.json").read_text())
    assert identity["world_size"] == 2
    assert Path(run_dir / "train.log").read_text().count("command: ") == 1  # rank 0 heads it
