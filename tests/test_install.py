"""`pip install .` (not editable) into a fresh venv, then every command from another directory:
nothing may reach back into the repository (conf/, data_recipes/, launch/, train.py).

The wheel is built from a copy of the repository and installed alone (`--no-deps`); the
dependencies come from this interpreter's site-packages through a view of it on PYTHONPATH
that leaves out llava_ablate itself (PYTHONPATH processes no .pth files, so an editable
install's finder is not picked up either) -- the test checks where `llava_ablate` imports from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import ROOT, _free_port

OURS = ("llava_ablate", "llava_ablate-", "__editable__", "llava_ablate_launcher")


def copy_repository(dst: Path) -> Path:
    """The files git would ship (tracked and new, not ignored), symlinks kept as links."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, names):
        src = ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst / name)
        else:
            shutil.copy2(src, dst / name)
    return dst


def dependency_view(dst: Path) -> Path:
    """This interpreter's site-packages as links, without any llava_ablate of its own."""
    site = Path(sysconfig.get_paths()["purelib"])
    dst.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(OURS) or entry.suffix == ".pth":
            continue
        if entry.name == "hydra_plugins":  # a namespace shared with our Slurm launcher
            (dst / entry.name).mkdir()
            for plugin in entry.iterdir():
                if not plugin.name.startswith(OURS):
                    os.symlink(plugin, dst / entry.name / plugin.name)
            continue
        os.symlink(entry, dst / entry.name)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, environment) of a fresh venv holding only our wheel."""
    base = tmp_path_factory.mktemp("install")
    source = copy_repository(base / "src")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "wheel",
                    source], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (base / "wheel").glob("llava_ablate-*.whl")
    venv.create(base / "venv", with_pip=False)
    python = base / "venv" / "bin" / "python"
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
                   check=True, capture_output=True)  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(dependency_view(base / "deps")),
        "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    env.pop("VIRTUAL_ENV", None)
    return python.parent, env


def run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    started = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    print(f"{time.perf_counter() - started:6.1f} s  {' '.join(map(str, cmd[1:4]))}")  # with -s
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_every_command_of_the_installed_package_from_another_directory(
    installed, cache_dir, tmp_path
):
    bindir, env = installed
    env = {**env, "LLAVA_CACHE_DIR": str(cache_dir)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    python, cli = bindir / "python", bindir / "llava-ablate"
    where = run([python, "-c", "import llava_ablate, hydra_plugins.llava_ablate_launcher as p; "
                 "print(llava_ablate.__file__, p.__file__)"], work, env)  # fmt: skip
    assert all(Path(f).is_relative_to(bindir.parent) for f in where.split()), where

    # The demo's data, exposure table and plan (its seven runs' configs composed and named).
    out = run([python, "-m", "llava_ablate.demo", "--quick", "--llms", "small_qwen2",
               "--runs-root", "demo", "--cache-dir", cache_dir, "--dry-run"], work, env)  # fmt: skip
    assert "stage 2  llm=small_qwen2 data=demo_extra" in out and "llava_ablate.launch" in out
    assert len(list((work / "demo").glob("exposure_demo_base-*.csv"))) == 1

    # The grids: planned and dry-run from the package's own grid files.
    out = run([cli, "plan", "tiny_chain", "--runs-root", "runs"], work, env)
    assert "grid tiny_chain: 4 jobs" in out
    out = run([cli, "launch", "tiny_2x2", "--dry-run", "--runs-root", "runs"], work, env)
    assert "grid tiny_2x2: 4 jobs" in out

    common = ["+experiment=tiny_align", "llm=tiny_qwen2", "train.runs_root=runs"]
    out = run([cli, "data", "build", *common], work, env)
    assert "toy_digit_captions" in out

    # Training on 2 ranks: torchrun starting the console command, with the evaluation hook at
    # the end; the module the grids and the demo start composes the same config.
    train = [*common, "recipe.max_steps=4", "train.save_every=2", "train.log_every=2",
             "eval/datasets=[mini_classify]", "eval.datasets.mini_classify.per_class=1",
             "eval.hook.at_end=true", "eval.stats.bootstrap=200"]  # fmt: skip
    run([python, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "--no-python", cli, "train", *train], work, env)  # fmt: skip
    (export,) = (work / "runs").glob("*/export")
    assert (export / "COMPLETE").exists()
    card = ModelCard.load(export / "README.md")  # the model card, with the run's own evaluation
    assert card.data.library_name == "transformers" and "llm:tiny_qwen2" in card.data.tags
    assert "llava-ablate train +experiment=tiny_align llm=tiny_qwen2" in card.text
    tokens = json.loads((export / "llava_ablate.json").read_text())["tokens"]
    assert 0 < tokens <= 4 * 8 * 128  # steps x global batch x max_length
    assert f"tokens seen: {tokens:,}" in card.text
    assert "| mini_classify | likelihood | 26 |" in card.text and "this run, step 4" in card.text
    load = ("from transformers import AutoModelForImageTextToText as M, AutoProcessor as P; "
            f"m = M.from_pretrained({str(export)!r}); P.from_pretrained({str(export)!r}); "
            "print(type(m).__name__)")  # the card's own snippet  # fmt: skip
    assert "LlavaForConditionalGeneration" in run([python, "-c", load], work, env)
    out = run([python, "-m", "llava_ablate.launch.train_app", *train, "--cfg", "job"], work, env)
    assert "name: tiny_qwen2" in out and "max_steps: 4" in out

    results = work / "results"
    run([cli, "evaluate", f"model.path={export}", "eval/datasets=[mini_classify]",
         "eval.datasets.mini_classify.per_class=1", f"out_dir={results}",
         "eval.stats.bootstrap=200", "model.dtype=fp32"], work, env)  # fmt: skip
    metrics = json.loads((results / "mini_classify" / "metrics.json").read_text())
    assert metrics["n_questions"] == 30  # 30 classes x 1 image
    card = ModelCard.load(export / "README.md")  # the same questions: evaluate's result now
    assert "`llava-ablate evaluate`" in card.text and "this run, step 4" not in card.text
    acc = metrics["scorers"]["likelihood"]["accuracy"]
    assert card.data.eval_results[0].metric_value == round(acc["value"], 4)

    run([cli, "report", export.parent, "--out", work / "report.html"], work, env)
    assert "tiny_qwen2" in (work / "report.html").read_text()
