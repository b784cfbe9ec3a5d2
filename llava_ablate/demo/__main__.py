"""`python -m llava_ablate.demo`: the paper in miniature, on a laptop CPU, offline.

A 2x2 grid — LLM (a random-init small Qwen2 vs the real pretrained SmolLM2-135M-Instruct) x
stage-2 data (demo_base, where 10 of mini-classify's 30 classes are rare or absent, vs
demo_extra, which adds them) — each trained in both LLaVA stages with DeepSpeed on CPU ranks on
top of a tiny CLIP tower pre-trained offline, then scored on the same frozen 26-option questions
(name likelihood and letter likelihood, 95% CIs), with hard classes = the least-exposed classes
of the base mixture, next to the tower's own CLIP zero-shot score, in an offline HTML report.
Re-running reuses everything already finished (shards, tower, stages, evaluations).

What each step runs is printed as a command: the same commands scale to the real recipes on a
GPU cluster, e.g.

  torchrun --nproc_per_node=8 train.py +experiment=llava15_7b_stage1
  torchrun --nproc_per_node=8 train.py +experiment=llava15_7b_stage2 eval/datasets=[imagenet]
  python train.py -m llm=vicuna7b,qwen2 data=llava665k,si32m hydra/launcher=slurm
  python evaluate.py model.type=clip model.path=openai/clip-vit-large-patch14-336 ...
  llava-ablate report runs/* --out report.html
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLMS = ("small_qwen2", "smollm2_135m")
DATA = ("demo_base", "demo_extra")
HARD_Q = 1 / 3  # 10 of 30 classes: the least exposed ones in the base mixture (rare + absent)
SCORER = "name_likelihood"  # the headline (first) scorer of demo_stage2


@dataclass(frozen=True)
class Budget:
    """Optimizer steps (global batch 32) per LLM and stage, and test images per class.

    Compute-matched rather than sample-matched: a SmolLM2 stage-2 sample costs ~30x a
    small-Qwen2 one on a 2-core CPU, and the random-init LLM needs thousands of samples before
    it names anything, so each LLM gets a similar share of the CPU time. The summary prints
    every variant's steps (see README: the same 24 steps give the small LLM 0.067)."""

    steps: dict[str, tuple[int, int]]  # llm -> (stage 1, stage 2)
    eval_per_class: int


FULL = Budget({"small_qwen2": (60, 240), "smollm2_135m": (60, 24)}, eval_per_class=5)
QUICK = Budget({"small_qwen2": (20, 120), "smollm2_135m": (4, 4)}, eval_per_class=4)  # tests


@dataclass
class Step:
    label: str
    script: str  # train.py | evaluate.py
    overrides: list[str]
    done: Path  # what exists once the step has finished
    steps: int | None = None  # training steps the finished export must record

    def finished(self) -> bool:
        if not self.done.exists():
            return False
        if self.steps is not None:
            info = json.loads((self.done / "llava_ablate.json").read_text())
            if info["steps"] != self.steps:
                raise SystemExit(
                    f"{self.done} was trained for {info['steps']} steps, this plan wants "
                    f"{self.steps}: use another --runs-root (or delete {self.done.parent})"
                )
        return True


def run_dir_of(overrides: list[str]) -> Path:
    """The run directory train.py names for these overrides."""
    from llava_ablate.cli import compose

    return Path(compose(overrides).train.run_dir)


def plan(runs_root: Path, cache_dir: Path, exposure: Path, budget: Budget, llms=LLMS) -> list[Step]:
    common = [f"train.runs_root={runs_root}", f"paths.cache_dir={cache_dir}"]
    hard = [
        "eval.hard.mode=exposure",
        f"eval.hard.exposure_table={exposure}",
        f"eval.hard.q={HARD_Q}",
        f"eval.questions.dir={runs_root / 'questions'}",  # one frozen question set for all
        f"eval.datasets.mini_classify.per_class={budget.eval_per_class}",
    ]
    # Each run's directory is what train.py will name it (axes + config hash); stage 2 is told
    # its own stage-1 export explicitly, so its identity is known before stage 1 has run.
    stage1 = {
        llm: [
            "+experiment=demo_stage1",
            f"llm={llm}",
            f"recipe.max_steps={budget.steps[llm][0]}",
            *common,
        ]
        for llm in llms
    }
    stage1_dir = {llm: run_dir_of(overrides) for llm, overrides in stage1.items()}
    steps = [
        Step(
            f"stage 1  llm={llm}",
            "train.py",
            stage1[llm],
            stage1_dir[llm] / "export",
            budget.steps[llm][0],
        )
        for llm in llms
    ]
    for llm in llms:
        for data in DATA:
            overrides = [
                "+experiment=demo_stage2",
                f"llm={llm}",
                f"data={data}",
                f"recipe.max_steps={budget.steps[llm][1]}",
                f"recipe.init_from={stage1_dir[llm] / 'export'}",
                *common,
                *hard,
            ]
            done = run_dir_of(overrides) / "export"
            label = f"stage 2  llm={llm} data={data}"
            steps.append(Step(label, "train.py", overrides, done, budget.steps[llm][1]))
    clip_out = runs_root / "mini_clip-zero_shot"
    steps.append(
        Step(
            "baseline mini-CLIP zero-shot",
            "evaluate.py",
            [
                "model.type=clip",
                f"model.path={cache_dir / 'mini_clip'}",
                "model.name=mini_clip",
                "eval/datasets=[mini_classify]",
                f"paths.cache_dir={cache_dir}",
                f"out_dir={clip_out}",
                *hard,
            ],
            clip_out / "metrics.json",
        )
    )
    return steps


def command(step: Step, nproc: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*launcher, str(ROOT / step.script), *step.overrides]


def run_step(step: Step, log_dir: Path, nproc: int) -> float | None:
    """Run one step (None: already finished); its output goes to a log file."""
    if step.finished():
        return None
    log = log_dir / (step.label.replace(" ", "_").replace("=", "-").replace("__", "_") + ".log")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    }
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(command(step, nproc)) + "\n")
        fh.flush()
        proc = subprocess.run(
            command(step, nproc), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{step.label} failed (full log: {log}):\n{tail}")
    return time.perf_counter() - t0


def exposure_table(runs_root: Path, cache_dir: Path) -> Path:
    """Concept exposure of the base mixture: hard classes are its least-mentioned ones."""
    from llava_ablate.cli import compose
    from llava_ablate.data.builtin import prepare_builtin
    from llava_ablate.data.exposure import exposure_table as table
    from llava_ablate.data.exposure import load_concepts, mixture_texts, write_exposure
    from llava_ablate.data.mixture import open_mixture

    out = runs_root / "exposure_demo_base.csv"
    if out.exists():
        return out
    cfg = compose(["data=demo_base", f"paths.cache_dir={cache_dir}"])
    prepare_builtin(cfg.data, cfg.train.seed)
    names = Path(cfg.data.sources[0].path).parent / "names.txt"
    rows = table(mixture_texts(open_mixture(cfg.data, cfg.train.seed)), load_concepts(names))
    write_exposure(rows, out)
    return out


def summary(stage2: list[Path], baseline: Path) -> str:
    from llava_ablate.report.collect import read_dataset, read_run

    def row(name: str, acc, hard) -> str:
        h = f"{hard.value:.3f} [{hard.ci_low:.3f}, {hard.ci_high:.3f}]" if hard else "-"
        return f"{name:<34} {acc.value:>6.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]  {h:>22}"

    lines = [f"{'variant (scorer)':<34} {'accuracy [95% CI]':>22}  {'hard classes [95% CI]':>22}"]
    for d in stage2:
        steps = json.loads((d / "export" / "llava_ablate.json").read_text())["steps"]
        for scorer in (SCORER, "likelihood"):
            ds = read_run(d, scorer).datasets["mini_classify"]
            llm, _, _, data, *_ = d.name.split("-")  # axes, then the config hash
            tag = "names" if scorer == SCORER else "letter"
            lines.append(row(f"{llm} x {data} ({tag})", ds.accuracy, ds.hard) + f"  {steps} st")
    clip = read_dataset(baseline / "mini_classify", "likelihood")
    lines.append(row("mini-CLIP zero-shot (26 options)", clip.accuracy, clip.hard))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m llava_ablate.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs-root", default="runs/demo", help="where the grid's runs go")
    parser.add_argument(
        "--cache-dir", default=".cache/llava_ablate", help="generated data, shards and tower"
    )
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks per run (CPU)")
    parser.add_argument("--quick", action="store_true", help="fewer steps (the test suite's run)")
    parser.add_argument(
        "--llms", nargs="+", default=list(LLMS), choices=LLMS, help="the LLM axis (default: both)"
    )
    args = parser.parse_args(argv)
    from tqdm import tqdm

    runs_root = Path(args.runs_root).resolve()
    cache_dir = Path(args.cache_dir).resolve()
    log_dir = runs_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    exposure = exposure_table(runs_root, cache_dir)
    steps = plan(runs_root, cache_dir, exposure, QUICK if args.quick else FULL, args.llms)
    bar = tqdm(steps, desc="demo", unit="step")
    for step in bar:
        bar.set_postfix_str(step.label)
        seconds = run_step(step, log_dir, args.nproc)
        took = "done before" if seconds is None else f"{seconds:5.0f} s"
        tqdm.write(f"{step.label:<40} {took}")
    stage2 = [s.done.parent for s in steps if s.label.startswith("stage 2")]
    report = runs_root / "report.html"
    from llava_ablate.cli import main as cli

    cli(
        [
            "report",
            *map(str, stage2),
            "--scorer",
            SCORER,
            "--out",
            str(report),
            "--exposure",
            str(exposure),
            "--title",
            "llava-ablate demo: LLM x data, in miniature",
        ]
    )
    print("\n" + summary(stage2, steps[-1].done.parent))
    print(f"\nchance = 1/26 = {1 / 26:.3f}; logs: {log_dir}\nreport: {report}")
    return report


if __name__ == "__main__":
    main()
