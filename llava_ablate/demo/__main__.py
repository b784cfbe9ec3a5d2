"""`python -m llava_ablate.demo`: the paper in miniature, on a laptop CPU, offline.

A 2x2 grid — LLM (a random-init small Qwen2 vs the real pretrained SmolLM2-135M-Instruct) x
stage-2 data (demo_base, where 10 of mini-classify's 30 classes are rare or absent, vs
demo_extra, which adds them) — each trained in both LLaVA stages with DeepSpeed on CPU ranks on
top of a tiny CLIP tower pre-trained offline, then scored on the same frozen 26-option questions
(name likelihood and letter likelihood, 95% CIs), with hard classes = the least-exposed classes
of the base mixture, next to the tower's own CLIP zero-shot score, in an offline HTML report.
Re-running reuses everything already finished (shards, tower, stages, evaluations).

What a re-run reproduces: every run is seeded (`train.seed`, default 42) and named by its config
hash, so the same command on the same machine gives the same figures to the last digit. Another
machine (other CPU kernels, thread counts) trains other weights: its figures differ from these
by about the spread over seeds. `--seeds 42 1 2` trains the cheap arm (small Qwen2: stage 1 and
both stage-2 data arms) once per seed, each from its own seed's stage 1, and the summary prints
the mean, sd and range over seeds of its accuracies and of the data-axis delta -- the yardstick
for which differences are real. (A seed also redraws the classification sources' question
templates and subsamples, so the shared shards are rebuilt when the seed changes.)

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

# The root scripts, as modules of the installed package: the demo runs from any directory.
APPS = {
    "train.py": "llava_ablate.launch.train_app",
    "evaluate.py": "llava_ablate.launch.evaluate_app",
}
LLMS = ("small_qwen2", "smollm2_135m")
DATA = ("demo_base", "demo_extra")
HARD_Q = 1 / 3  # 10 of 30 classes: the least exposed ones in the base mixture (rare + absent)
SCORER = "name_likelihood"  # the headline (first) scorer of demo_stage2
DEFAULT_SEED = 42  # train.seed's default (llava_ablate/config.py)
SEEDED = ("small_qwen2",)  # arms trained once per --seeds seed; the others on the first seed


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
    llm: str = ""  # a training step's arm (for the summary)
    data: str = ""
    seed: int | None = None

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
    from llava_ablate.config import compose_config, to_object

    return Path(to_object(compose_config(overrides)).train.run_dir)


def arm_seeds(llm: str, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """The seeds an LLM arm trains with: every one for the cheap arm, else the first."""
    return seeds if llm in SEEDED else seeds[:1]


def plan(
    runs_root: Path,
    cache_dir: Path,
    exposure: Path,
    budget: Budget,
    llms=LLMS,
    seeds: tuple[int, ...] = (DEFAULT_SEED,),
) -> list[Step]:
    common = [f"train.runs_root={runs_root}", f"paths.cache_dir={cache_dir}"]
    hard = [
        "eval.hard.mode=exposure",
        f"eval.hard.exposure_table={exposure}",
        f"eval.hard.q={HARD_Q}",
        f"eval.questions.dir={runs_root / 'questions'}",  # one frozen question set for all
        f"eval.datasets.mini_classify.per_class={budget.eval_per_class}",
    ]
    # Each run's directory is what train.py will name it (axes + config hash, the seed
    # included); stage 2 is told its own (same-seed) stage-1 export explicitly, so its identity
    # is known before stage 1 has run. Seed by seed: the shared shards follow train.seed.
    steps = []
    for seed in seeds:
        arms = [llm for llm in llms if seed in arm_seeds(llm, seeds)]
        tag = {llm: f" seed={seed}" if len(arm_seeds(llm, seeds)) > 1 else "" for llm in arms}
        stage1_done = {}
        for llm in arms:
            overrides = [
                "+experiment=demo_stage1",
                f"llm={llm}",
                f"recipe.max_steps={budget.steps[llm][0]}",
                f"train.seed={seed}",
                *common,
            ]
            stage1_done[llm] = run_dir_of(overrides) / "export"
            label = f"stage 1  llm={llm}{tag[llm]}"
            steps.append(Step(label, "train.py", overrides, stage1_done[llm],
                              budget.steps[llm][0], llm, "", seed))  # fmt: skip
        for llm in arms:
            for data in DATA:
                overrides = [
                    "+experiment=demo_stage2",
                    f"llm={llm}",
                    f"data={data}",
                    f"recipe.max_steps={budget.steps[llm][1]}",
                    f"recipe.init_from={stage1_done[llm]}",
                    f"train.seed={seed}",
                    *common,
                    *hard,
                ]
                done = run_dir_of(overrides) / "export"
                label = f"stage 2  llm={llm} data={data}{tag[llm]}"
                steps.append(Step(label, "train.py", overrides, done, budget.steps[llm][1],
                                  llm, data, seed))  # fmt: skip
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
    return [*launcher, "-m", APPS[step.script], *step.overrides]


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
        proc = subprocess.run(command(step, nproc), env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{step.label} failed (full log: {log}):\n{tail}")
    return time.perf_counter() - t0


def exposure_table(runs_root: Path, cache_dir: Path) -> Path:
    """Concept exposure of the base mixture: hard classes are its least-mentioned ones."""
    from llava_ablate.config import compose_config, to_object
    from llava_ablate.data.builtin import prepare_builtin
    from llava_ablate.data.exposure import exposure_table as table
    from llava_ablate.data.exposure import load_concepts, mixture_texts, write_exposure
    from llava_ablate.data.mixture import open_mixture

    out = runs_root / "exposure_demo_base.csv"
    if out.exists():
        return out
    cfg = to_object(compose_config(["data=demo_base", f"paths.cache_dir={cache_dir}"]))
    prepare_builtin(cfg.data, cfg.train.seed)
    names = Path(cfg.data.sources[0].path).parent / "names.txt"
    rows = table(mixture_texts(open_mixture(cfg.data, cfg.train.seed)), load_concepts(names))
    write_exposure(rows, out)
    return out


@dataclass(frozen=True)
class ArmScore:
    """One stage-2 run's headline (name-likelihood) accuracies."""

    llm: str
    data: str
    seed: int
    accuracy: float
    hard: float | None  # on the hard classes


def spread(values: list[float], signed: bool = False) -> str:
    """`mean  sd  min - max` over seeds (sd with n - 1)."""
    import statistics

    f = "{:+.3f}" if signed else "{:.3f}"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (f"{f.format(statistics.fmean(values)):>7} {sd:6.3f}  "
            f"{f.format(min(values))} - {f.format(max(values))}")  # fmt: skip


def seed_spread_lines(scores: list[ArmScore]) -> list[str]:
    """For each LLM arm trained with several seeds: mean, sd and range over its seeds of the
    accuracy and hard-class accuracy per data arm, and of the data-axis delta (DATA[1] -
    DATA[0], overall and hard) computed within each seed (the same seed's stage 1 under both)."""
    lines = []
    for llm in dict.fromkeys(s.llm for s in scores):
        arm = [s for s in scores if s.llm == llm]
        seeds = list(dict.fromkeys(s.seed for s in arm))
        if len(seeds) < 2:
            continue
        lines += ["", f"{llm}: spread over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
                  f"name likelihood", f"{'':<44} {'mean':>7} {'sd':>6}  min - max"]  # fmt: skip
        by = {(s.data, s.seed): s for s in arm}
        for data in DATA:
            runs = [by[data, seed] for seed in seeds if (data, seed) in by]
            if runs:
                lines.append(f"{f'  {data} accuracy':<44} {spread([r.accuracy for r in runs])}")
            hard = [r.hard for r in runs if r.hard is not None]
            if hard:
                lines.append(f"{f'  {data} hard classes':<44} {spread(hard)}")
        base, extra = DATA
        pairs = [(by[base, s], by[extra, s]) for s in seeds if (base, s) in by and (extra, s) in by]
        if len(pairs) < 2:
            continue
        for what, get in (("accuracy", lambda r: r.accuracy), ("hard classes", lambda r: r.hard)):
            deltas = [(a.seed, get(b) - get(a)) for a, b in pairs
                      if get(a) is not None and get(b) is not None]  # fmt: skip
            if len(deltas) < 2:
                continue
            per_seed = ", ".join(f"{d:+.3f} (seed {seed})" for seed, d in deltas)
            label = f"  delta {extra} - {base}, {what}"
            lines.append(f"{label:<44} {spread([d for _, d in deltas], signed=True)}"
                         f"   per seed: {per_seed}")  # fmt: skip
    return lines


def summary(stage2: list[Step], baseline: Path, wall_s: float | None = None) -> str:
    """The report's rows (seeds aggregated, the zero-shot row first, the report's intervals)
    for the names and the letter scorer, the wall time and the two findings with their CIs."""
    from llava_ablate.report.summary import grid_summary

    paths = [*dict.fromkeys(s.done.parent for s in stage2), baseline]
    return grid_summary(paths, scorers=[SCORER, "likelihood"], llms=(LLMS[0], LLMS[1]),
                        data=DATA, wall_s=wall_s)  # fmt: skip


def main(argv: list[str] | None = None) -> Path | None:
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
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[DEFAULT_SEED],
        help=f"train.seed values: {', '.join(SEEDED)} trains once per seed (its spread over seeds "
        f"is printed), the other arms on the first (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the data and the exposure table, print each step's command; train nothing",
    )
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")
    if len(args.seeds) > 1 and not set(SEEDED) & set(args.llms):
        parser.error(f"--seeds: extra seeds train only {', '.join(SEEDED)}, not in --llms")
    from tqdm import tqdm

    runs_root = Path(args.runs_root).resolve()
    cache_dir = Path(args.cache_dir).resolve()
    log_dir = runs_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    exposure = exposure_table(runs_root, cache_dir)
    budget = QUICK if args.quick else FULL
    steps = plan(runs_root, cache_dir, exposure, budget, args.llms, tuple(args.seeds))
    if args.dry_run:
        for step in steps:
            todo = "finished" if step.finished() else shlex.join(command(step, args.nproc))
            print(f"{step.label:<40} {todo}")
        return None
    started = time.perf_counter()  # the summary's wall time: the steps and the report
    bar = tqdm(steps, desc="demo", unit="step")
    for step in bar:
        bar.set_postfix_str(step.label)
        seconds = run_step(step, log_dir, args.nproc)
        took = "done before" if seconds is None else f"{seconds:5.0f} s"
        tqdm.write(f"{step.label:<40} {took}")
    stage2 = [s for s in steps if s.label.startswith("stage 2")]
    report = runs_root / "report.html"
    from llava_ablate.cli import main as cli

    cli(
        [
            "report",
            *(str(s.done.parent) for s in stage2),  # every seed: the report aggregates them
            str(steps[-1].done.parent),  # the zero-shot baseline: its own row, the baseline
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
    print("\n" + summary(stage2, steps[-1].done.parent, time.perf_counter() - started))
    print(f"\nchance = 1/26 = {1 / 26:.3f}; logs: {log_dir}\nreport: {report}")
    return report


if __name__ == "__main__":
    main()
