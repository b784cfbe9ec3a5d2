"""Shared fixtures: a per-session cache (tokenizers, toy data, dequantised SmolLM2) and a
helper that launches the real `train.py` under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    # Shared across the session so the toy data and tokenizers are built once.
    path = Path(os.environ.get("LLAVA_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world_of_one(monkeypatch):
    """A world of one in this process; the env is restored afterwards, so processes that later
    tests spawn (torchrun, Slurm jobs) do not inherit a MASTER_PORT/RANK meant for this one."""

    before = set(os.environ)
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(key, value)
    yield
    for key in set(os.environ) - before:  # whatever DeepSpeed's init exported
        monkeypatch.delenv(key, raising=False)


def launch(
    overrides: list[str],
    *,
    cache_dir: Path,
    nproc: int = 2,
    timeout: int = 600,
    background: bool = False,
):
    """Run `torchrun train.py <overrides>` for real; return the CompletedProcess (or Popen)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={_free_port()}",
        str(ROOT / "train.py"),
        *overrides,
    ]
    env = {
        **os.environ,
        "LLAVA_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if background:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def train_launcher(cache_dir):
    def run(overrides, **kw):
        return launch(overrides, cache_dir=cache_dir, **kw)

    return run


def compose_config(overrides: list[str]):
    from llava_ablate.config import compose_config

    return compose_config(overrides)


def build_tiny(
    cache_dir: Path,
    vision: str = "tiny_clip",
    llm: str = "tiny_llama",
    projector: str = "mlp2x_gelu",
    overrides: tuple[str, ...] = (),
):
    from llava_ablate.config import to_object
    from llava_ablate.model.build import build_variant

    cfg = to_object(
        compose_config([f"vision={vision}", f"llm={llm}", f"projector={projector}", *overrides])
    )
    return build_variant(cfg.vision, cfg.llm, cfg.projector, arch=cfg.arch, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_variant(cache_dir):
    return build_tiny(cache_dir)
