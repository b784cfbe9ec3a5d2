"""The software and hardware a run or an evaluation ran on, recorded beside every result so that
a table can say what produced each cell; compared when a run resumes and when a report puts
rows side by side.

`current_environment()` is one flat mapping (schema `ENV_SCHEMA`):
  llava-ablate, commit, dirty, diff_sha256   the project's version; where it runs from a git
      checkout, its commit, whether the tree has changes and the hash of `git diff HEAD`
  python, torch, cuda, cudnn, nccl            (cuda/cudnn/nccl where torch has them)
  transformers, deepspeed, peft, webdataset, hydra-core
  accelerator, accelerators, hosts            the device model and count (`cpu`, 0 without
      one), and the nodes of the job (Slurm's or torchrun's variables; 1 outside a launcher)

Where it goes: `<run>/environment.json` (the environment the run started with, and every
resume that differed from it), the export's `llava_ablate.json` (so its model card), the W&B
config, and every `metrics.json`. None of it is part of the config hash (run_identity.py): the
same config on other software is the same run, and the difference is reported, never refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llava_ablate.base.files import atomic_write

log = logging.getLogger(__name__)

ENV_SCHEMA = 1
RECORD = "environment.json"
PACKAGES = ("transformers", "deepspeed", "peft", "webdataset", "hydra-core")
# Compared in reports and by `--strict-env`; the hardware keys are listed, never an error (a
# grid may land on several GPU models), but a resume warns about them too.
SOFTWARE = ("llava-ablate", "commit", "dirty", "diff_sha256", "python", "torch", "cuda", "cudnn",
            "nccl", *PACKAGES)  # fmt: skip
HARDWARE = ("accelerator", "accelerators", "hosts")
KEYS = (*SOFTWARE, *HARDWARE)
ABSENT = "absent"  # how a key one side does not record is shown
_SOURCE = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding us


@cache
def current_environment() -> dict[str, Any]:
    """This process's environment (computed once: the code and libraries it runs are the ones
    it imported)."""
    env: dict[str, Any] = {"schema": ENV_SCHEMA, "llava-ablate": _version("llava-ablate")}
    env |= _git_state(_SOURCE)
    env["python"] = platform.python_version()
    env |= _torch_state()
    env |= {name: _version(name) for name in PACKAGES}
    env["hosts"] = _hosts()
    return {"schema": ENV_SCHEMA, **{k: env[k] for k in KEYS if k in env}}  # one order everywhere


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> bytes | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _git_state(root: Path) -> dict[str, Any]:
    """commit, dirty and diff_sha256 of the checkout at `root`; {} when it is none (an installed
    wheel)."""
    if not (root / ".git").exists():
        return {}
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(root, "status", "--porcelain") or b""
    state: dict[str, Any] = {"commit": commit.decode().strip(), "dirty": bool(status.strip())}
    if state["dirty"]:
        # Tracked changes and the names of new files: two trees with the same hash ran the same
        # edits (a new file's content is not hashed).
        diff = (_git(root, "diff", "HEAD", "--binary") or b"") + status
        state["diff_sha256"] = hashlib.sha256(diff).hexdigest()[:16]
    return state


def _torch_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.__version__}
    if torch.version.cuda:
        state["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        if torch.backends.cudnn.is_available():
            state["cudnn"] = str(torch.backends.cudnn.version())
        try:
            state["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError):
            pass
        state["accelerator"] = torch.cuda.get_device_name(0)
        state["accelerators"] = torch.cuda.device_count()
    else:
        state["accelerator"] = "cpu"
        state["accelerators"] = 0
    return state


def _hosts() -> int:
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    world, local = os.environ.get("WORLD_SIZE", ""), os.environ.get("LOCAL_WORLD_SIZE", "")
    if world.isdigit() and local.isdigit() and int(local):
        return max(1, int(world) // int(local))
    return 1


def environment_differences(
    old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...] = KEYS
) -> dict[str, tuple[Any, Any]]:
    """Key -> (old, new) for every recorded key whose value differs, in `KEYS` order."""
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def shown(value: Any) -> str:
    return ABSENT if value is None else str(value)


def describe(differences: dict[str, tuple[Any, Any]]) -> list[str]:
    """`transformers 5.24.0 vs 5.25.0` for each difference."""
    return [f"{k} {shown(a)} vs {shown(b)}" for k, (a, b) in differences.items()]


def read_run_environment(run_dir: Path) -> dict | None:
    """`<run_dir>/environment.json`, or None (a run from before it was recorded)."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text())


def record_run_environment(run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Rank 0, at every start: the first start writes `environment.json`; a resume compares
    this process's environment with the one the run started with, appends any difference to
    the record and returns it (the caller warns)."""
    env = current_environment()
    record = read_run_environment(run_dir)
    if record is None:
        record = {"environment": env, "resumed_with_changes": []}
        differences: dict[str, tuple[Any, Any]] = {}
    else:
        differences = environment_differences(record["environment"], env)
        if not differences:
            return {}
        record["resumed_with_changes"].append(
            {
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "changes": describe(differences),
                "environment": env,
            }
        )
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(run_dir) / RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return differences


def warn_resumed_with_changes(differences: dict[str, tuple[Any, Any]]) -> None:
    if differences:
        log.warning(
            "resumed in another environment than the run started with (%s): its steps were "
            "not all made by the same software; the model card says so too",
            "; ".join(describe(differences)),
        )
