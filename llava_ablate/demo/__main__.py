"""`python -m llava_ablate.demo`: the paper in miniature, on a laptop CPU, offline.

A 2x2 grid -- LLM (a random-init small Qwen2 vs the same model pre-trained offline on text that
describes the 30 classes, `llm=mini_lm`: the same shape and cost per step, the same samples) x
stage-2 data (demo_base, where 10 of mini-classify's 30 classes are rare or absent, vs
demo_extra, which adds them) -- each trained in both LLaVA stages with DeepSpeed on CPU ranks on
top of a tiny CLIP tower pre-trained offline, then scored on the same frozen 26-option questions
(name likelihood and letter likelihood, 95% CIs), with hard classes = the least-exposed classes
of the base mixture, next to the tower's own CLIP zero-shot score, in an offline HTML report.
`--with-smollm2` adds the real SmolLM2-135M-Instruct (~30x the CPU time per sample, so fewer
stage-2 steps). Re-running reuses everything already finished (shards, tower, mini-LM, stages,
evaluations). The progress bar shows each step's expected time on 2 idle cores; each finished
step prints its wall and CPU time, and the summary ends with the wall time.

What a re-run reproduces: every run is seeded (`train.seed`, default 42) and named by its config
hash, so the same command on the same machine gives the same figures to the last digit. Another
machine (other CPU kernels, thread counts) trains other weights: its figures differ from these
by about the spread over seeds. `--seeds 42 1 2` trains both small LLMs (stage 1 and both
stage-2 data arms) once per seed, each from its own seed's stage 1, and the summary prints the
LLM-axis delta per seed and the mean, sd and range over seeds of the accuracies and of the
data-axis delta -- the yardstick for which differences are real. (A seed also redraws the
classification sources' question templates and subsamples, so the shared shards are rebuilt
when the seed changes.)

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
import os
import resource
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from llava_ablate.demo.plan import (
    DEFAULT_SEED,
    FULL,
    LLMS,
    OPTIONAL_LLMS,
    QUICK,
    SEEDED,
    Step,
    command,
    plan,
)
from llava_ablate.demo.summary import LETTER_SCORER, SCORER, summary

# Steps done, the elapsed total, and the running step with its expected time from the plan.
BAR = "{desc} {n_fmt}/{total_fmt} steps |{bar:20}| {elapsed} elapsed{postfix}"


@dataclass(frozen=True)
class Took:
    """What a step cost: wall seconds and the CPU seconds (user + system) of its processes."""

    wall: float
    cpu: float


def run_step(step: Step, log_dir: Path, nproc: int) -> Took | None:
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
    t0, cpu0 = time.perf_counter(), _children_cpu()
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(command(step, nproc)) + "\n")
        fh.flush()
        proc = subprocess.run(command(step, nproc), env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{step.label} failed (full log: {log}):\n{tail}")
    return Took(time.perf_counter() - t0, _children_cpu() - cpu0)


def _children_cpu() -> float:
    """CPU seconds of every finished child process (torchrun waits for its ranks)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _total_cpu() -> float:
    """CPU seconds of this process (data, exposure table, report) and its finished children."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime + _children_cpu()


def exposure_table(runs_root: Path, cache_dir: Path) -> Path:
    """Concept exposure of the base mixture: hard classes are its least-mentioned ones. Counted
    on every start (seconds) into a file named by its content: the path is in each stage-2 run's
    config, hence in its identity, so runs scored with another table are never reused."""
    import hashlib
    import tempfile

    from llava_ablate.config import compose_config, to_object
    from llava_ablate.data.builtin import prepare_builtin
    from llava_ablate.data.exposure import exposure_table as table
    from llava_ablate.data.exposure import load_concepts, mixture_texts, write_exposure
    from llava_ablate.data.mixture import open_mixture

    cfg = to_object(compose_config(["data=demo_base", f"paths.cache_dir={cache_dir}"]))
    prepare_builtin(cfg.data, cfg.train.seed)
    names = Path(cfg.data.sources[0].path).parent / "names.txt"
    rows = table(mixture_texts(open_mixture(cfg.data, cfg.train.seed)), load_concepts(names))
    with tempfile.TemporaryDirectory(dir=runs_root) as tmp:
        counted = Path(tmp) / "table.csv"
        write_exposure(rows, counted)
        digest = hashlib.sha256(counted.read_bytes()).hexdigest()[:8]
        out = runs_root / f"exposure_demo_base-{digest}.csv"
        counted.replace(out)  # the same table again: the same bytes
    return out


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
        "--llms",
        nargs="+",
        default=list(LLMS),
        choices=LLMS + OPTIONAL_LLMS,
        help="the LLM axis (default: the random-init and the text-pretrained small LLM)",
    )
    parser.add_argument(
        "--with-smollm2",
        action="store_true",
        help="add the real SmolLM2-135M-Instruct arm (~30x the CPU time per sample; fewer "
        "stage-2 steps, first seed only; ~33 min more on 2 idle cores)",
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
    started, cpu0 = time.perf_counter(), _total_cpu()  # the data and exposure table included
    if args.with_smollm2 and "smollm2_135m" not in args.llms:
        args.llms.append("smollm2_135m")
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
    steps += card_steps(steps, runs_root, cache_dir)
    if args.dry_run:
        for step in steps:
            todo = "finished" if step.finished() else shlex.join(command(step, args.nproc))
            print(f"{step.label:<40} {todo}")
        return None
    todo = [step for step in steps if not step.finished()]
    planned = sum(step.expected_s for step in todo)
    print(f"{len(todo)} of {len(steps)} steps to run, expected ~{planned / 60:.0f} min on 2 idle "
          f"CPU cores (more on a busy machine); logs: {log_dir}")  # fmt: skip
    bar = tqdm(steps, desc="demo", unit="step", bar_format=BAR)
    for step in bar:
        bar.set_postfix_str(f"{step.label} (expected ~{step.expected_s:.0f} s)", refresh=True)
        took = run_step(step, log_dir, args.nproc)
        if took is None:
            tqdm.write(f"{step.label:<44} done before")
            continue
        tqdm.write(f"{step.label:<44} {took.wall:5.0f} s (expected ~{step.expected_s:.0f} s, "
                   f"CPU {took.cpu:.0f} s)")  # fmt: skip
    bar.close()
    stage2 = [s for s in steps if s.label.startswith("stage 2")]
    baseline = next(s for s in steps if s.label.startswith("baseline")).done.parent  # zero-shot
    report = runs_root / "report.html"
    letter = runs_root / "report_letter.html"
    from llava_ablate.cli import main as cli

    # The headline (class names, with the protocol cards) and the paper's A-Z answer, each with
    # its axes' pooled deltas and paired tests.
    for scorer, out, title, extra in (
        (SCORER, report, "LLM x data, in miniature", card_args(steps)),
        (LETTER_SCORER, letter, "LLM x data, the A-Z letter answer", []),
    ):
        cli(
            [
                "report",
                # Every seed (the report aggregates them) and the zero-shot row, which the report
                # takes as its baseline: every table and plot carries it, with the paired tests.
                *report_inputs(stage2, baseline),
                "--scorer",
                scorer,
                "--out",
                str(out),
                "--exposure",
                str(exposure),
                "--title",
                f"llava-ablate demo: {title}",
                *extra,
            ]
        )
    print("\n" + summary(stage2, baseline, time.perf_counter() - started))
    print(f"\nchance = 1/26 = {1 / 26:.3f}; logs: {log_dir}\nreport: {report} (class names); "
          f"{letter} (the letter answer)")  # fmt: skip
    wall, cpu = time.perf_counter() - started, _total_cpu() - cpu0
    print(f"wall time {wall / 60:.1f} min; CPU time {cpu / 60:.1f} min (this process and the "
          f"steps it ran, on {os.cpu_count()} CPUs)")  # fmt: skip
    return report


# The protocol card of each first-seed stage-2 model: evaluate.py eval=protocol_demo (every
# axis, on 30 questions and 4 rotations), hard and image-level distractors by the mini-CLIP.
CARD_S = 40.0  # seconds per model (38-44 s measured on 2 busy cores: CPU 34-37 s)


def card_steps(steps: list[Step], runs_root: Path, cache_dir: Path) -> list[Step]:
    stage2 = [s for s in steps if s.label.startswith("stage 2")]
    first = stage2[0].seed if stage2 else None
    out = []
    for s in (s for s in stage2 if s.seed == first):
        card_dir = runs_root / "cards" / s.done.parent.name  # the run's name: its config hash
        same_questions = [o for o in s.overrides if o.startswith(("eval.", "paths."))]
        overrides = [f"model.path={s.done}", f"model.name={s.llm}_x_{s.data}", "eval=protocol_demo",
                     "eval/datasets=[mini_classify]",
                     f"eval.questions.image_encoder=clip:{cache_dir / 'mini_clip'}",
                     f"eval.questions.hard_encoder_path={cache_dir / 'mini_clip'}",
                     *same_questions, f"out_dir={card_dir}"]  # fmt: skip
        out.append(Step(f"card     llm={s.llm} data={s.data}", "evaluate.py", overrides,
                        card_dir / "metrics.json", expected_s=CARD_S))  # fmt: skip
    return out


def card_args(steps: list[Step]) -> list[str]:
    cards = [str(s.done.parent) for s in steps if s.label.startswith("card")]
    return ["--cards", *cards] if cards else []


def report_inputs(stage2: list[Step], baseline: Path) -> list[str]:
    """The report's paths: each stage-2 run (every seed) and the zero-shot baseline's results."""
    return [*dict.fromkeys(str(s.done.parent) for s in stage2), str(baseline)]


if __name__ == "__main__":
    main()
