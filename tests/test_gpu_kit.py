"""The GPU kit cannot rot: the rehearsal builds it (`make gpu-kit`'s code), then runs
bench/gpu_run.sh --smoke as a lent GPU machine would run it, without the GPU: the kit installed
with --no-index into a fresh venv layered over a stand-in for the device image (CPython 3.12,
torch and transformers at the image's versions, bench/gpu_kit.py IMAGE), and `bench gpu --smoke`
there, with SmolLM2 at its real shape from the kit's tokenizer and no Fashion-MNIST files.

The stand-in's torch 2.11.0 for CPython 3.12 comes from PyPI (the CUDA build: no CPU build of it
is on PyPI or on this machine): ~2.6 GB with its nvidia-* wheels, 45 s to download here, built
once into LLAVA_GPU_REHEARSAL_DIR (default ~/.cache/llava_ablate/gpu-rehearsal). It runs on
the CPU here. Python 3.12 comes from pyenv (or LLAVA_PYTHON312); without it the rehearsal fails,
saying how to get it, unless LLAVA_ALLOW_NO_PY312=1.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_kit

from conftest import ROOT


def test_verify_catches_a_changed_or_stray_file(tmp_path):
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    (kit / "wheels" / "hjson-3.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (kit / "smollm2").mkdir()
    (kit / "smollm2" / "config.json").write_text("{}")
    manifest = gpu_kit.write_manifest(kit, 1.0)
    assert [f.get("name") for f in manifest["files"]] == [None, "hjson"]
    assert manifest["files"][1]["sha256"] == hashlib.sha256(b"wheel").hexdigest()
    gpu_kit.verify(kit)
    (kit / "smollm2" / "config.json").write_text('{"changed": 1}')
    with pytest.raises(SystemExit, match="changed or missing.*config.json"):
        gpu_kit.verify(kit)
    (kit / "smollm2" / "config.json").write_text("{}")
    (kit / "stray.whl").write_bytes(b"")
    with pytest.raises(SystemExit, match="not in the manifest.*stray.whl"):
        gpu_kit.verify(kit)


def test_smollm2_shape_composes_without_the_wheel(tmp_path):
    """The full bench's SmolLM2 arm at its real shape from random init, the tokenizer from a
    folder: both LLM arms compose and size (SMOLLM2_135M is checked against the wheel's
    config.json when the kit is built)."""
    from bench import gpu

    shapes = gpu.smollm2_shape(gpu.FULL, str(tmp_path / "smollm2"))
    assert not any("pkg://" in o for over in shapes.llms.values() for o in over)
    assert gpu.llm_weights(shapes, "group", tmp_path) == {
        "smollm2_135m": "random init",
        "qwen2_1.5b_shape": "random init",
    }


def _python312() -> str:
    found = os.environ.get("LLAVA_PYTHON312") or next(
        iter(sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))), None
    )
    if found and Path(found).exists():
        return found
    why = (
        "the GPU-kit rehearsal needs CPython 3.12 (the device image's): `pyenv install 3.12` or "
        "set LLAVA_PYTHON312 to a python3.12"
    )
    if os.environ.get("LLAVA_ALLOW_NO_PY312"):
        pytest.skip(why)
    pytest.fail(why + " (LLAVA_ALLOW_NO_PY312=1 turns this into a skip)")


def _image_stand_in(python312: str) -> Path:
    """A venv with the device image's packages (gpu_kit.IMAGE), built once and reused."""
    spec = [f"{n}=={v}" if v else n for n, v in gpu_kit.IMAGE.items()]
    key = hashlib.sha256(" ".join([python312, *spec]).encode()).hexdigest()[:12]
    root = Path(
        os.environ.get(
            "LLAVA_GPU_REHEARSAL_DIR", Path.home() / ".cache" / "llava_ablate" / "gpu-rehearsal"
        )
    )
    venv = root / f"image-py312-{key}"
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([python312, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
        subprocess.run([*pip, *spec], check=True, timeout=1800)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)  # never a half-built stand-in
        raise
    (venv / ".complete").write_text(" ".join(spec) + "\n")
    return venv


@pytest.mark.slow  # 2-core CPU: 6.4 min (kit ~1, gpu_run.sh --smoke 5.5); the stand-in once 4.6 min
def test_rehearsal_kit_installs_offline_over_the_image_and_runs_the_bench(tmp_path):
    python312 = _python312()
    stand_in = _image_stand_in(python312)
    kit = tmp_path / "kit"
    built = subprocess.run(
        [sys.executable, "-m", "bench.gpu_kit", "build", str(kit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["total_bytes"] <= gpu_kit.LIMIT_BYTES
    assert {f["name"] for f in manifest["files"] if "name" in f} == set(gpu_kit.WHEELS)

    out = tmp_path / "out"
    project_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != project_bin),
        GPU_RUN_PYTHON=str(stand_in / "bin/python"),
        GPU_KIT=str(kit),
        GPU_RUN_VENV=str(tmp_path / "venv"),
        GPU_RUN_WORK=str(tmp_path / "work"),
        OUT=str(out),
        LLAVA_CACHE_DIR=str(tmp_path / "cache"),
        LLAVA_TEST_CACHE=str(tmp_path / "cache"),
        # As on the device: no Fashion-MNIST files, no network to fetch them.
        FASHION_MNIST_DIR=str(tmp_path / "no-fashion-mnist"),
        FASHION_MNIST_URL="http://127.0.0.1:9",
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["bash", "bench/gpu_run.sh", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    versions = json.loads((out / "versions.json").read_text())
    assert versions["python"].startswith("3.12.")
    assert versions["torch"].startswith(gpu_kit.IMAGE["torch"])  # the image's, not the kit's
    assert versions["transformers"] == gpu_kit.WHEELS["transformers"][0]  # the kit's
    assert versions["deepspeed"] == gpu_kit.WHEELS["deepspeed"][0]
    r = json.loads((out / "bench_gpu.json").read_text())
    assert r["llm_weights"] == {"tiny_llama": "random init", "smollm2_135m": "random init"}
    ran = {(row["llm"], row["batching"]) for row in r["training"]}
    assert ran == {(llm, m) for llm in ("tiny_llama", "smollm2_135m") for m in ("group", "pack")}
    assert all(row["tokens_per_s"] > 0 for row in r["training"])
    assert r["eval"]["options"] == 26
    log = (out / "gpu_run.log").read_text()
    assert "preflight: every requirement met" in log
    assert "needs a CUDA GPU" in log  # the CUDA tests were collected, and skipped saying why


def test_gpu_run_modes():
    """Each mode's bench arguments are bench gpu's own; an unknown mode stops at once."""
    import re
    import shlex

    from bench import gpu

    script = (ROOT / "bench/gpu_run.sh").read_text()
    modes = dict(re.findall(r"^  (--\w+)\) bench\+=\((.*)\) ;;$", script, re.M))
    assert set(modes) == {"--quick", "--smoke"}
    for mode, args in modes.items():
        ns = gpu.build_parser().parse_args(["--smollm2-shape", "kit/smollm2", *shlex.split(args)])
        assert ns.smollm2_shape == "kit/smollm2", mode
    proc = subprocess.run(
        ["bash", "bench/gpu_run.sh", "--fast"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
