"""`make install` and the demo's dry run as a user without root: no sudo, no chromium, no
Debian Fashion-MNIST. The install finishes (a complete venv, never a half-installed one) and the
dry run either fetches Fashion-MNIST or stops with a message naming every way to provide it.
Runs in a copy of the repository with its own venv (the project's venv is never touched)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from test_install import copy_repository

from conftest import ROOT


def _make(args: list[str], cwd, env, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_make_install_and_demo_dry_run_without_root(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    empty = tmp_path / "no-fashion"
    empty.mkdir()
    with socket.socket() as s:  # an address where nothing answers: offline
        s.bind(("127.0.0.1", 0))
        offline = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HOME": str(tmp_path / "home"), "FASHION_MNIST_URL": offline}
    venv = tmp_path / "venv"
    # No Debian dataset where make looks, and no root: SUDO=false makes any apt-get fail.
    common = [f"VENV={venv}", "SUDO=false", f"FASHION_DEB={empty}", f"PY={sys.executable}"]
    proc = _make(["install", *common], repo, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (venv / ".installed").exists()
    log = proc.stdout + proc.stderr
    assert "dataset-fashion-mnist not installed" in log and "FASHION_MNIST_DIR" in log
    assert "chromium" not in log  # the demo's install needs no browser

    dry = subprocess.run(
        [venv / "bin" / "python", "-m", "llava_ablate.demo", "--quick", "--dry-run",
         "--runs-root", tmp_path / "runs", "--cache-dir", tmp_path / "cache"],
        cwd=tmp_path, env={**env, "FASHION_MNIST_DIR": str(empty)}, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert dry.returncode != 0  # offline and no files: a clear stop, naming every way
    for way in ("apt-get install dataset-fashion-mnist", "FASHION_MNIST_DIR", offline):
        assert way in dry.stderr, (way, dry.stderr[-3000:])
    assert not (tmp_path / "cache" / "mini_classify").exists()  # nothing half-built

    # A failing install step leaves no venv behind (here: a torch that does not exist).
    broken = tmp_path / "broken-venv"
    proc = _make(["install", f"VENV={broken}", "SUDO=false", "TORCH=torch==0.0.0"], repo, env)
    assert proc.returncode != 0 and not broken.exists(), proc.stderr[-2000:]
    assert f"make install failed: {broken} removed" in proc.stderr


def test_the_demo_target_needs_neither_root_nor_a_browser():
    """`make -n demo`'s recipe (with a fresh venv to install) never calls chromium, and the
    browser is a prerequisite of the test targets only."""
    proc = subprocess.run(["make", "-n", "demo", "VENV=/nonexistent/venv", "SUDO=false"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert "chromium" not in proc.stdout and "pip install" in proc.stdout
    proc = subprocess.run(["make", "-n", "test", "VENV=/nonexistent/venv", "SUDO=false"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert "chromium" in proc.stdout
