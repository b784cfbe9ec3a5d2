"""`python -m llava_ablate.demo`: the paper in miniature, on a laptop CPU, offline.

A 2x2 grid — LLM (random-init small Qwen2 vs the real pretrained SmolLM2-135M) x stage-2 data
(demo_base, where 10 of mini-classify's 30 classes are rare or absent, vs demo_extra, which adds
them) — each trained in both LLaVA stages with DeepSpeed on CPU ranks, scored with 26-option
multiple-choice questions (likelihood), hard classes = the lowest-exposure classes of the base
mixture, and compared in an offline HTML report. Re-running reuses everything already finished.

The same commands scale to the real recipes on a GPU cluster: replace the experiment presets with
`+experiment=llava15_7b_stage1/2` or a grid in launch/ (`python -m llava_ablate.launch
llm_x_data --dry-run`), and the demo's evaluation set with `eval/datasets=[imagenet,...]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLMS = ("small_qwen2", "smollm2_135m")
DATA = ("demo_base", "demo_extra")
HARD_Q = 0.34  # 10 of 30 classes: the rare and absent ones, if exposure says so


@dataclass
class Step:
    label: str
    overrides: list[str]


def plan(runs_root: Path, exposure: Path, quick: bool) -> list[Step]:
    common = [f"train.runs_root={runs_root}"]
    s1 = ["recipe.max_steps=8"] if quick else []
    s2 = ["recipe.max_steps=24", "eval.datasets.mini_classify.per_class=4"] if quick else []
    steps = [
        Step(f"stage 1  llm={llm}", ["+experiment=demo_stage1", f"llm={llm}", *common, *s1])
        for llm in LLMS
    ]
    hard = [
        "eval.hard.mode=exposure",
        f"eval.hard.exposure_table={exposure}",
        f"eval.hard.q={HARD_Q}",
    ]
    steps += [
        Step(
            f"stage 2  llm={llm} data={data}",
            ["+experiment=demo_stage2", f"llm={llm}", f"data={data}", *common, *hard, *s2],
        )
        for llm in LLMS
        for data in DATA
    ]
    return steps


def run_step(step: Step, log_dir: Path, nproc: int) -> float:
    log = log_dir / (step.label.replace(" ", "_").replace("=", "-") + ".log")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        str(ROOT / "train.py"),
        *step.overrides,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    }
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"{step.label} failed (log: {log}):\n{tail}")
    return time.perf_counter() - t0


def exposure_table(runs_root: Path) -> Path:
    """Concept exposure of the base mixture: hard classes are its least-mentioned ones."""
    from llava_ablate.cli import compose
    from llava_ablate.data.builtin import prepare_builtin
    from llava_ablate.data.exposure import exposure_table as table
    from llava_ablate.data.exposure import load_concepts, mixture_texts, write_exposure
    from llava_ablate.data.mixture import open_mixture

    out = runs_root / "exposure_demo_base.csv"
    if out.exists():
        return out
    cfg = compose(["data=demo_base"])
    prepare_builtin(cfg.data, cfg.train.seed)
    names = Path(cfg.data.sources[0].path).parent / "names.txt"
    rows = table(mixture_texts(open_mixture(cfg.data, cfg.train.seed)), load_concepts(names))
    write_exposure(rows, out)
    return out


def summary(run_dirs: list[Path]) -> str:
    from llava_ablate.report.collect import read_run

    lines = [f"{'variant':<44} {'accuracy [95% CI]':>26} {'hard classes':>13}"]
    for d in run_dirs:
        run = read_run(d)
        for ds in run.datasets.values():
            acc = ds.accuracy
            hard = f"{ds.hard.value:.3f}" if ds.hard else "-"
            lines.append(
                f"{d.name[:44]:<44} {acc.value:>8.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]"
                f"{hard:>13}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m llava_ablate.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs-root", default="runs/demo", help="where the grid's runs go")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks per run (CPU)")
    parser.add_argument("--quick", action="store_true", help="few steps: the test suite's version")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    runs_root = Path(args.runs_root).resolve()
    log_dir = runs_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    exposure = exposure_table(runs_root)
    steps = plan(runs_root, exposure, args.quick)
    bar = tqdm(steps, desc="demo", unit="run")
    for step in bar:
        bar.set_postfix_str(step.label)
        seconds = run_step(step, log_dir, args.nproc)
        tqdm.write(f"{step.label:<44} {seconds:6.0f} s")
    stage2 = sorted(p for p in runs_root.iterdir() if p.is_dir() and "-demo_finetune" in p.name)
    report = runs_root / "report.html"
    from llava_ablate.cli import main as cli

    cli(
        [
            "report",
            *map(str, stage2),
            "--out",
            str(report),
            "--exposure",
            str(exposure),
            "--title",
            "llava-ablate demo: LLM x data, in miniature",
        ]
    )
    print("\n" + summary(stage2))
    print(f"\nchance = 1/26 = {1 / 26:.3f}; report: {report}")
    return report


if __name__ == "__main__":
    main()
