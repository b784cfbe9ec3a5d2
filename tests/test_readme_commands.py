"""Every command in a fenced ```bash block of README.md (the front page), docs/*.md (the pages
the detail lives on, docs/README.md their index) and bench/README.md is exercised here; a
command that appears on two pages is one entry.

`EXERCISES` maps each command (its text, comment dropped, continuation lines joined, words
separated by one space) to how it is exercised; a README command without an entry fails
`test_every_readme_command_has_an_entry`, naming it. How:

- `Compose(door)`: what Hydra composes and validates for it (train.py's or evaluate.py's config,
  every job of a `-m` sweep, torchrun's own options dropped). 7B weights and cluster paths are
  never touched: composing reads configs only. A key, option or value that no longer exists
  fails here.
- `Real(...)`: runs as written (in this process through the same entry point, or as a
  subprocess), with the stated substitutions or appended arguments (`--dry-run` instead of a
  Slurm submission, a temporary folder for `/abs/path/my_conf`).
- `Parse()`: the command's own argparse parser reads its arguments (flags renamed or removed
  fail); the work itself needs a cluster's results or downloads.
- `Make(target)`: `make -n <target>` (the recipe exists and expands; nothing runs).
- `Covered(test)`: a named test elsewhere runs it for real (slow ones: `make test-slow`); the
  test must exist.

Slow real runs carry `@pytest.mark.slow` through `Real(slow=True)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The front page, every docs page and the bench page: a page added to docs/ is covered at once.
READMES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench/README.md"]


def readme_commands(path: Path) -> list[str]:
    """The commands of every ```bash block: comments dropped, `\\` continuations joined."""
    commands = []
    blocks = re.findall(r"^```bash\n(.*?)^```", path.read_text(), re.S | re.M)
    for block in blocks:
        for line in re.sub(r"\\\n", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


# --- how a command is exercised --------------------------------------------------------------


@dataclass
class Compose:
    """Compose + validate the config the command's door composes (all jobs of a `-m` sweep)."""

    door: str  # "train" | "evaluate" | "data build" (train.py's config)
    argv: list[str] | None = None  # replaces the README's words (its placeholders filled)


@dataclass
class Real:
    """Run for real: `argv` replaces the command's own (None: as written), `append` is added;
    `subprocess`: a fresh interpreter (else in this process through its entry point)."""

    argv: list[str] | None = None
    append: list[str] = field(default_factory=list)
    subprocess: bool = False
    slow: bool = False
    why: str = ""


@dataclass
class Parse:
    """The command's argparse parser reads it; `argv` replaces the README's (its `[...]` filled)."""

    argv: list[str] | None = None


@dataclass
class Make:
    target: str


@dataclass
class Covered:
    test: str  # tests/<file>.py::<function>
    why: str


MY_CONF = "/abs/path/my_conf"  # docs/package.md's placeholder for a user's config folder

EXERCISES: dict[str, Compose | Real | Parse | Make | Covered] = {
    # --- README.md (the front page) and docs/demo.md: set-up
    "make demo": Make("demo"),
    "make test": Make("test"),
    # --- README.md only: a local grid (every job of the sweep composed), a grid's report
    "python train.py -m llm=vicuna7b,qwen2 data=llava665k,si32m": Compose("train"),
    "llava-ablate report runs/llm_x_data/finetune --baseline llm=vicuna7b,data=llava665k "
    "--out llm_x_data.html": Parse(),
    # --- docs/training.md: training a variant (7B weights, cluster data: composed)
    "torchrun --nproc_per_node=8 train.py llm=qwen2 data=si32m": Compose("train"),
    "torchrun --nproc_per_node=8 train.py +experiment=llava15_7b_stage1": Compose("train"),
    "torchrun --nproc_per_node=8 train.py +experiment=llava15_7b_stage2": Compose("train"),
    "python train.py llm=qwen2 data=si32m --cfg job": Real(subprocess=True),
    "torchrun --nproc_per_node=8 train.py arch=llava_onevision vision=siglip_so400m llm=qwen2 "
    "data=si32m": Compose("train"),
    "torchrun --nproc_per_node=8 train.py +experiment=onevision_si_7b": Compose("train"),
    # --- docs/package.md: installed anywhere, your own configs
    "pip install -e .": Covered(
        "tests/test_install.py::test_every_command_of_the_installed_package_from_another_directory",
        "installs into a fresh venv (never into the shared one); slow",
    ),
    "pip install .": Covered(
        "tests/test_install.py::test_every_command_of_the_installed_package_from_another_directory",
        "the wheel into a fresh venv, then every command from another directory; slow",
    ),
    f"llava-ablate train llm=my_llm data=my_mix hydra.searchpath=[file://{MY_CONF}]": Compose(
        "train"
    ),
    f"llava-ablate plan my_grid hydra.searchpath=[file://{MY_CONF}]": Real(
        append=["--runs-root", "runs"], why="the user's folder written to a temporary directory"
    ),
    f"llava-ablate launch my_grid hydra.searchpath=[file://{MY_CONF}]": Real(
        append=["--dry-run", "--runs-root", "runs"], why="planned: a real launch trains 2 runs"
    ),
    # --- docs/data.md
    "llava-ablate data build data=llava665k llm=vicuna7b": Compose("data build"),
    "llava-ablate data exposure data=si32m --classes imagenet_names.txt --out "
    "si32m_exposure.csv": Parse(),
    "torchrun --nproc_per_node=8 train.py data=llava665k": Compose("train"),
    "torchrun --nproc_per_node=8 train.py data=llava665k data.batching=pack "
    "train.attn_implementation=flash_attention_2": Compose("train"),
    # --- docs/evaluation.md: evaluating
    "python evaluate.py model.path=runs/<variant>/export eval/datasets=[imagenet,cub200]": Compose(
        "evaluate",  # the placeholder filled in
        "python evaluate.py model.path=runs/x/export eval/datasets=[imagenet,cub200]".split(),
    ),
    "python evaluate.py model.path=llava-hf/llava-1.5-7b-hf model.name=llava15-7b eval=hard": (
        Compose("evaluate")
    ),
    "python evaluate.py model.type=clip model.path=openai/clip-vit-large-patch14-336 "
    "model.templates=openai80": Compose("evaluate"),
    "torchrun --nproc_per_node=8 evaluate.py model.path=Qwen/Qwen2-VL-7B-Instruct "
    "eval/datasets=[imagenet]": Compose("evaluate"),
    "python evaluate.py model.path=... eval.stats.compare_to=results/llava15-7b/random": (
        Compose("evaluate")
    ),
    # --- docs/evaluation.md: the protocol card (a tiny Qwen2-VL runs it for real:
    # tests/test_eval_protocol.py)
    "python evaluate.py model.path=Qwen/Qwen2-VL-7B-Instruct eval=protocol "
    "eval.questions.image_encoder=clip:openai/clip-vit-large-patch14 eval/datasets=[imagenet]": (
        Compose("evaluate")
    ),
    "llava-ablate report results/Qwen2-VL-7B-Instruct/random --out card.html": Parse(),
    # --- docs/evaluation.md: the lmms-eval bridge
    "make lmms": Make("lmms"),
    "llava-ablate lmms export-task --out lmms_tasks eval/datasets=[imagenet] [--pad-fill-from "
    "runs/x/export]": Parse(
        "lmms export-task --out lmms_tasks eval/datasets=[imagenet] --pad-fill-from "
        "runs/x/export".split()
    ),
    ".venv-lmms/bin/python -m lmms_eval --model llava_hf --model_args pretrained=runs/x/export "
    "--tasks llava_ablate_imagenet_generate --include_path lmms_tasks --log_samples "
    "--output_path lmms_out": Covered(
        "tests/test_lmms_bridge.py::test_llava_hf_generate_agrees_with_our_generate_scorer",
        "lmms-eval's own runner on a tiny export, in .venv-lmms",
    ),
    "llava-ablate lmms import --samples lmms_out/<model>/<date>_samples_llava_ablate_imagenet_"
    "generate.jsonl --task-dir lmms_tasks/llava_ablate_imagenet --out results/x-lmms "
    "--model-name x-lmms": Parse(),
    "llava-ablate report results/x/random results/x-lmms --scorer generate": Parse(),
    # --- docs/grids.md: grids on Slurm, reports, the paper's tables (README.md repeats some)
    "python train.py -m llm=vicuna7b,qwen2 data=llava665k,si32m hydra/launcher=slurm "
    "hydra.launcher.partition=gpu hydra.launcher.account=myproj": Compose("train"),
    "python -m llava_ablate.launch llm_x_data --dry-run": Real(),
    "python -m llava_ablate.launch llm_x_data hydra.launcher.partition=gpu": Real(
        append=["--dry-run"], why="planned: submitting needs a Slurm cluster"
    ),
    "llava-ablate plan vision_x_recipe --gpu h100-80gb": Real(),
    "llava-ablate report runs/llm_x_data/finetune --baseline llm=vicuna7b,data=llava665k "
    "--exposure si32m_exposure.csv --out llm_x_data.html [--wandb --wandb-entity me "
    "--wandb-group llm_x_data]": Parse(
        "report runs/llm_x_data/finetune --baseline llm=vicuna7b,data=llava665k --exposure "
        "si32m_exposure.csv --out llm_x_data.html --wandb --wandb-entity me --wandb-group "
        "llm_x_data".split()
    ),
    "python -m llava_ablate.launch paper_models --dry-run": Real(),
    "python -m llava_ablate.launch paper_models hydra.launcher.partition=gpu "
    "hydra.launcher.account=me": Real(append=["--dry-run"], why="planned: needs Slurm"),
    "llava-ablate report runs/paper_models/random --baseline clip_l14_336 --out "
    "tables/paper_random.html": Parse(),
    "llava-ablate report runs/paper_models/hard --baseline clip_l14_336 --out "
    "tables/paper_hard.html": Parse(),
    "llava-ablate report runs/paper_models/protocol --baseline clip_l14_336 --out "
    "tables/paper_protocol.html": Parse(),
    "python -m llava_ablate.launch llm_x_data hydra.launcher.partition=gpu "
    "hydra.launcher.account=me": Real(append=["--dry-run"], why="planned: needs Slurm"),
    "llava-ablate report runs/llm_x_data/eval/random --baseline llm=vicuna7b,data=llava665k "
    "--out tables/llm_x_data_random.html": Parse(),
    # --- docs/environment.md
    "make install": Make("install"),
    "make install LOCK=requirements/cuda.txt "
    "TORCH=/path/to/your/torch-2.13.0+cu130-cp311-linux_x86_64.whl": Make("install"),
    "make install LOCK=": Make("install"),
    "make lock": Make("lock"),
    "make lock UPGRADE=1": Make("lock"),
    "llava-ablate report runs/llm_x_data/finetune --strict-env": Parse(),
    # --- bench/README.md
    "python bench/eval_throughput.py": Parse(),
    "python bench/eval_throughput.py --llm tiny_llama --questions 64": Real(
        subprocess=True, slow=True
    ),
    "python bench/eval_throughput.py --prefill-sharing 16": Parse(),
    "python -m bench.loader_throughput [--samples 600] [--workers 2] [--step-ms 50]": Parse(
        ["--samples", "600", "--workers", "2", "--step-ms", "50"]
    ),
    "python -m bench.loader_throughput --torch-threads 1": Parse(),
    "python bench/name_scoring.py": Parse(),
    "python bench/name_scoring.py --llm tiny_llama --questions 32": Real(
        subprocess=True, slow=True
    ),
    "python -m bench gpu": Parse(),
    "python -m bench gpu --batching group none": Parse(),
    "python -m bench gpu --smoke --peak-tflops 1": Covered(
        "tests/test_bench_gpu.py::test_gpu_bench_smoke_reports_every_figure", "the smoke run"
    ),
    "make bench": Make("bench"),
    "make peers": Make("peers"),
    "python -m bench.train_throughput": Parse(),
    "python -m bench.train_throughput --smoke": Covered(
        "tests/test_bench_train.py::test_train_bench_smoke_gives_every_trainer_figures_or_a_reason",
        "the smoke run, every trainer (the peers' venvs from `make peers`); slow",
    ),
    "python -m bench.train_throughput --models tiny --trainers ours-group trl": Parse(),
    "make gpu-kit": Make("gpu-kit"),
    "python bench/gpu_kit.py verify .gpu-kit": Parse(),
    "bash bench/gpu_run.sh --smoke": Covered(
        "tests/test_gpu_kit.py::test_rehearsal_kit_installs_offline_over_the_image_and_runs_the_bench",
        "the kit built and installed offline over a stand-in for the device image; slow",
    ),
    "bash bench/gpu_run.sh": Covered(
        "tests/test_gpu_kit.py::test_rehearsal_kit_installs_offline_over_the_image_and_runs_the_bench",
        "the same script as --smoke (install, preflight, bench, CUDA tests); the full run needs "
        "a GPU machine",
    ),
    "bash bench/gpu_run.sh --quick": Covered(
        "tests/test_gpu_kit.py::test_gpu_run_modes",
        "--quick's bench arguments are parsed; the run itself needs a GPU machine",
    ),
    "python -m bench loader_throughput padding_waste": Parse(),
    "python -m bench.shard_hashing [--samples 600] [--repeats 3]": Parse(
        ["--samples", "600", "--repeats", "3"]
    ),
    "python -m bench.logits_memory [--tokens 2048] [--steps 3]": Parse(
        ["--tokens", "2048", "--steps", "3"]
    ),
}


def _all_commands() -> list[str]:
    return [c for readme in READMES for c in readme_commands(readme)]


def test_every_readme_command_has_an_entry():
    missing = [c for c in _all_commands() if c not in EXERCISES]
    assert not missing, (
        "README commands that no test exercises; add each to EXERCISES in "
        f"tests/test_readme_commands.py (Compose / Real / Parse / Make / Covered): {missing}"
    )


def test_no_entry_outlives_its_command():
    stale = sorted(set(EXERCISES) - set(_all_commands()))
    assert not stale, f"EXERCISES entries for commands no README has any more: {stale}"


def _cases(kind: type, slow: bool | None = None) -> list:
    cases = []
    for command, how in EXERCISES.items():
        if isinstance(how, kind) and (slow is None or getattr(how, "slow", False) == slow):
            marks = [pytest.mark.slow] if getattr(how, "slow", False) else []
            cases.append(pytest.param(command, how, id=command[:80], marks=marks))
    return cases


# --- Compose -------------------------------------------------------------------------------------


def _door(words: list[str]) -> tuple[str, list[str]]:
    """(train | evaluate | cli | launch | bench..., the arguments after the door)."""
    if words[0] == "torchrun":  # its own options, then the script
        words = words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]
    elif words[0] == "python":
        words = words[1:]
    if words[0] in ("train.py", "evaluate.py"):
        return words[0][:-3], words[1:]
    if words[:2] in (["llava-ablate", "train"], ["llava-ablate", "evaluate"]):
        return words[1], words[2:]
    if words[:3] == ["llava-ablate", "data", "build"]:
        return "data build", words[3:]
    if words[0] == "llava-ablate":
        return "cli", words[1:]
    if words[:2] == ["-m", "llava_ablate.launch"]:
        return "launch", words[2:]
    if words[0] == "-m":
        return words[1], words[2:]  # a module: bench, bench.loader_throughput
    if words[0].endswith(".py"):
        return words[0][:-3].replace("/", "."), words[1:]  # bench/x.py -> bench.x
    raise AssertionError(f"no door known for {words}")


def _jobs(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides of a `-m` sweep, split by Hydra's own basic sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


@pytest.fixture
def user_conf(tmp_path, monkeypatch) -> Path:
    """docs/package.md's `my_conf/` (my_llm, my_tower, my_mix, my_grid) in a temporary directory,
    which is also the working directory."""
    from test_user_configs import write_user_conf

    write_user_conf(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "my_conf"


def _substituted(words: list[str], user_conf: Path) -> list[str]:
    return [w.replace(MY_CONF, str(user_conf)) for w in words]


@pytest.mark.parametrize("command, how", _cases(Compose))
def test_compose(command, how, user_conf):
    from llava_ablate.config import compose_config, to_object
    from llava_ablate.eval_config import register_eval_configs, validate_evaluate

    door, args = _door(how.argv or command.split())
    assert door == how.door, f"{command}: composed as {how.door} but its door is {door}"
    args = _substituted(args, user_conf)
    multirun = "-m" in args or "--multirun" in args
    args = [a for a in args if a not in ("-m", "--multirun", "--cfg", "job")]
    jobs = _jobs(args) if multirun else [args]
    assert not multirun or len(jobs) > 1
    for overrides in jobs:
        if door in ("train", "data build"):
            to_object(compose_config(overrides))  # validates every key, choice and range
        else:
            register_eval_configs()
            validate_evaluate(compose_config(overrides, "evaluate"))


# --- Real ----------------------------------------------------------------------------------------


def _entry(door: str) -> Callable[[list[str]], object]:
    if door == "cli":
        from llava_ablate.cli import main

        return main
    if door == "launch":
        from llava_ablate.launch.__main__ import main

        return main
    if door in ("train", "evaluate"):
        app = importlib.import_module(f"llava_ablate.launch.{door}_app")
        return lambda argv: app.run(argv)
    module = importlib.import_module(door)
    return module.main


@pytest.mark.parametrize("command, how", _cases(Real))
def test_real(command, how, user_conf, tmp_path):
    words = how.argv or command.split()
    door, args = _door(words)
    args = [*_substituted(args, user_conf), *how.append]
    if how.subprocess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        script = [str(ROOT / f"{door.replace('.', '/')}.py")]
        run = subprocess.run(
            [sys.executable, *script, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path if door.startswith(("train", "evaluate")) else ROOT,
            env=env,
            timeout=900,
        )
        assert run.returncode == 0, f"{command}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return
    status = _entry(door)(args)
    assert status in (None, 0), f"{command}: exit status {status}"


# --- Parse ---------------------------------------------------------------------------------------


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("command, how", _cases(Parse))
def test_parse(command, how, monkeypatch):
    """The command's own parser accepts its arguments; the work stops there."""
    real = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = real(self, args, namespace)
        if self.prog.startswith("llava-ablate") and getattr(ns, "func", None) is None:
            return ns, extra  # the top parser's subcommand dispatch: keep parsing
        raise _Parsed(ns, extra)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    door, args = _door(command.split())
    args = how.argv if how.argv is not None else args
    if door == "bench":  # `python -m bench [names]`: names are benches, each with its parser
        from bench.__main__ import BENCHES, SUBCOMMANDS

        if args and args[0] in SUBCOMMANDS:
            door, args = SUBCOMMANDS[args[0]], args[1:]
        else:
            assert set(args) <= set(BENCHES), f"{command}: unknown benches {args}"
            return
    with pytest.raises(_Parsed) as parsed:
        _entry(door)(args)
    ns, extra = parsed.value.args
    assert not extra, f"{command}: arguments its parser does not take: {extra}"


# --- Make ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, how", _cases(Make))
def test_make_target_exists(command, how):
    run = subprocess.run(
        ["make", "-n", how.target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"{command}: {run.stderr}"
    assert run.stdout.strip(), f"{command}: the recipe expands to nothing"


# --- Covered -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, how", _cases(Covered))
def test_covered_by_a_named_test(command, how):
    path, _, name = how.test.partition("::")
    source = (ROOT / path).read_text()
    assert re.search(rf"^def {re.escape(name)}\(", source, re.M), (
        f"{command}: {how.test} is named as the test that runs it, but it does not exist"
    )


def test_the_extraction_reads_continuations_and_drops_comments(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "text\n```bash\n# a comment line\nllava-ablate report a \\\n    --out b.html  # why\n"
        "```\n```\nnot bash\n```\n"
    )
    assert readme_commands(readme) == ["llava-ablate report a --out b.html"]


def test_a_command_that_no_longer_composes_fails(user_conf):
    """The Compose check is not a formality: a removed option fails it."""
    with pytest.raises(Exception, match="llm/qwen3"):
        test_compose("python train.py llm=qwen3", Compose("train"), user_conf)
    with pytest.raises(Exception, match="micro_batchsize"):
        test_compose("python train.py recipe.micro_batchsize=4", Compose("train"), user_conf)
