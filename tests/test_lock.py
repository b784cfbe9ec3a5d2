"""The lock (requirements/cpu.txt, requirements/cuda.txt) agrees with pyproject.toml, and the docs
name the versions it holds. Offline and fast: both files are parsed, nothing is resolved (`make
lock` resolves; see the Makefile)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")

LOCKS = ROOT / "requirements"
# Left out of the lock on purpose (requirements/overrides.txt): torch comes from your build.
OVERRIDDEN = {"torch", "triton", "llm", "llama-cpp-python"}


def read_lock(path: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, sha256 hashes, `# via` text) of every pin."""
    pins: dict[str, tuple[str, list[str], str]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line):
            name = canonicalize_name(m.group(1))
            pins[name] = (m.group(2), [], "")
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[name][1].append(h.group(1))
        elif name and line.strip().startswith("#"):
            version, hashes, via = pins[name]
            pins[name] = (version, hashes, via + line.strip().lstrip("#").strip() + " ")
        elif line.startswith(("-", "#")) or not line.strip():
            name = None if not line.startswith("    ") else name
    return pins


def requirements(extras: tuple[str, ...] = ("dev",)) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    extra_in = (LOCKS / "extra.in").read_text().splitlines()
    lines += [x.split("#")[0].strip() for x in extra_in if x.split("#")[0].strip()]
    return [Requirement(x) for x in lines]


def _disagreements(reqs: list[Requirement], pins: dict) -> list[str]:
    out = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name in OVERRIDDEN or (req.marker and not req.marker.evaluate()):
            continue
        if name not in pins:
            out.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            out.append(f"{req}: the lock pins {pins[name][0]}")
    return out


@pytest.mark.parametrize("lock, extras", [("cpu.txt", ("dev",)), ("cuda.txt", ("dev", "liger"))])
def test_every_requirement_is_pinned_within_its_range(lock, extras):
    pins = read_lock(LOCKS / lock)
    wrong = _disagreements(requirements(extras), pins)
    assert not wrong, f"pyproject.toml and requirements/{lock} disagree (run `make lock`): {wrong}"


@pytest.mark.parametrize("lock", ["cpu.txt", "cuda.txt"])
def test_every_pin_has_hashes_and_torch_is_left_to_your_build(lock):
    pins = read_lock(LOCKS / lock)
    assert len(pins) > 50
    assert not [n for n, (_, hashes, _) in pins.items() if not hashes]
    assert not OVERRIDDEN & set(pins), "torch & co. come from your build, not the lock"


def test_no_pin_outlives_its_requirement():
    """A dependency removed from pyproject.toml leaves the lock too (`make lock`)."""
    wanted = {canonicalize_name(r.name) for r in requirements(("dev",))}
    direct = {n for n, (_, _, via) in read_lock(LOCKS / "cpu.txt").items()
              if "llava-ablate (pyproject.toml)" in via or "requirements/extra.in" in via}  # fmt: skip
    assert direct - wanted == set(), f"pinned as ours but not in pyproject.toml: {direct - wanted}"


def test_the_cuda_lock_has_the_same_pins_plus_the_cuda_extra():
    cpu, cuda = read_lock(LOCKS / "cpu.txt"), read_lock(LOCKS / "cuda.txt")
    assert {n: v[0] for n, v in cpu.items()} == {n: v[0] for n, v in cuda.items() if n in cpu}
    assert set(cuda) - set(cpu) == {"liger-kernel"}


def test_the_docs_name_the_locked_versions():
    """docs/environment.md's table of tested versions is the lock's (and the Makefile's torch)."""
    text = (ROOT / "docs" / "environment.md").read_text()
    pins = read_lock(LOCKS / "cpu.txt")
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    named = dict(re.findall(r"^\| `?([a-z-]+)`? \| ([0-9][^ |]*) \|", text, re.M))
    expected = {n: pins[n][0] for n in ("transformers", "deepspeed", "peft", "webdataset",
                                        "hydra-core", "wandb")}  # fmt: skip
    expected["torch"] = torch.group(1)
    assert {n: named.get(n) for n in expected} == expected


def test_make_install_installs_the_lock_with_hashes():
    out = subprocess.run(["make", "-n", "install", "VENV=/nonexistent/venv", "SUDO=false"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--no-deps --require-hashes -r requirements/cpu.txt" in out
    out = subprocess.run(["make", "-n", "install", "VENV=/nonexistent/venv", "SUDO=false",
                          "LOCK=requirements/cuda.txt"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "--require-hashes -r requirements/cuda.txt" in out
