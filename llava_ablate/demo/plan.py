"""The demo's grid as a list of steps: which command each runs, what marks it finished, and how
long it is expected to take on 2 idle CPU cores (the progress bar shows it)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

# The root scripts, as modules of the installed package: the demo runs from any directory.
APPS = {
    "train.py": "llava_ablate.launch.train_app",
    "evaluate.py": "llava_ablate.launch.evaluate_app",
    "mini_lm": "llava_ablate.demo.mini_lm_app",  # one process (no torchrun)
}
# The LLM axis: two LLMs of one shape and cost per step, random-init vs pre-trained on text about
# the classes; both see the same samples. SmolLM2 (real, ~30x the cost per sample) is optional.
LLMS = ("small_qwen2", "mini_lm")
OPTIONAL_LLMS = ("smollm2_135m",)
DATA = ("demo_base", "demo_extra")
HARD_Q = 1 / 3  # 10 of 30 classes: the least exposed ones in the base mixture (rare + absent)
DEFAULT_SEED = 42  # train.seed's default (llava_ablate/config.py)
SEEDED = LLMS  # arms trained once per --seeds seed; SmolLM2 on the first seed only


@dataclass(frozen=True)
class Budget:
    """Optimizer steps (global batch 32) per LLM and stage, and test images per class.

    small_qwen2 and mini_lm get the same steps, hence the same samples (sample-matched: the
    paper's comparison); SmolLM2's stage-2 sample costs ~30x theirs, so its optional arm gets
    fewer steps (compute-matched)."""

    steps: dict[str, tuple[int, int]]  # llm -> (stage 1, stage 2)
    eval_per_class: int


FULL = Budget(
    {"small_qwen2": (60, 240), "mini_lm": (60, 240), "smollm2_135m": (60, 24)}, eval_per_class=5
)
QUICK = Budget(  # the test suite's run
    {"small_qwen2": (20, 60), "mini_lm": (20, 60), "smollm2_135m": (4, 4)}, eval_per_class=4
)

# Expected wall seconds on 2 idle CPU cores, from `make demo` measured on a fresh clone on an
# idle 2-core AMD EPYC (docs/demo.md: the demo's timing): a launch (imports, DeepSpeed init on 2
# ranks), seconds per optimizer step, and the evaluation at the end of stage 2 per test image.
LAUNCH_S = 10.0
STEP_S = {  # llm -> (stage 1, stage 2) seconds per step
    "small_qwen2": (0.12, 0.32),
    "mini_lm": (0.12, 0.32),
    "smollm2_135m": (1.0, 8.0),  # projected from CPU time on a loaded machine (not re-measured)
}
EVAL_S_PER_IMAGE = {"small_qwen2": 0.1, "mini_lm": 0.1, "smollm2_135m": 1.0}
MINI_LM_S = 70.0  # pre-training the mini-LM (one thread)
FIRST_STAGE1_S = 50.0  # mini-classify and the mini-CLIP tower, built by the first stage 1
BASELINE_S = 8.0


@dataclass
class Step:
    label: str
    script: str  # a key of APPS
    overrides: list[str]
    done: Path  # what exists once the step has finished
    steps: int | None = None  # training steps the finished export must record
    llm: str = ""  # a training step's arm (for the summary)
    data: str = ""
    seed: int | None = None
    expected_s: float = 0.0  # on 2 idle CPU cores

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
    """The seeds an LLM arm trains with: every one for the cheap arms, else the first."""
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
    images = 30 * budget.eval_per_class
    steps = []
    if "mini_lm" in llms:  # its own step, so that the bar shows it (stage 1 would build it too)
        overrides = ["llm=mini_lm", f"paths.cache_dir={cache_dir}"]
        done = cache_dir / "mini_lm" / "build.json"
        steps.append(Step("pretrain mini-LM on class texts", "mini_lm", overrides, done,
                          expected_s=MINI_LM_S))  # fmt: skip
    # Each run's directory is what train.py will name it (axes + config hash, the seed
    # included); stage 2 is told its own (same-seed) stage-1 export explicitly, so its identity
    # is known before stage 1 has run. Seed by seed: the shared shards follow train.seed.
    for seed in seeds:
        arms = [llm for llm in llms if seed in arm_seeds(llm, seeds)]
        tag = {llm: f" seed={seed}" if len(arm_seeds(llm, seeds)) > 1 else "" for llm in arms}
        stage1_done = {}
        for llm in arms:
            n = budget.steps[llm][0]
            overrides = ["+experiment=demo_stage1", f"llm={llm}", f"recipe.max_steps={n}",
                         f"train.seed={seed}", *common]  # fmt: skip
            stage1_done[llm] = run_dir_of(overrides) / "export"
            first = FIRST_STAGE1_S if not any(s.script == "train.py" for s in steps) else 0
            steps.append(Step(f"stage 1  llm={llm}{tag[llm]}", "train.py", overrides,
                              stage1_done[llm], n, llm, "", seed,
                              LAUNCH_S + first + n * STEP_S[llm][0]))  # fmt: skip
        for llm in arms:
            n = budget.steps[llm][1]
            for data in DATA:
                overrides = [
                    "+experiment=demo_stage2",
                    f"llm={llm}",
                    f"data={data}",
                    f"recipe.max_steps={n}",
                    f"recipe.init_from={stage1_done[llm]}",
                    f"train.seed={seed}",
                    *common,
                    *hard,
                ]
                done = run_dir_of(overrides) / "export"
                label = f"stage 2  llm={llm} data={data}{tag[llm]}"
                expected = LAUNCH_S + n * STEP_S[llm][1] + images * EVAL_S_PER_IMAGE[llm]
                steps.append(Step(label, "train.py", overrides, done, n, llm, data, seed,
                                  expected))  # fmt: skip
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
            expected_s=BASELINE_S,
        )
    )
    return steps


def command(step: Step, nproc: int) -> list[str]:
    if step.script == "mini_lm":
        return [sys.executable, "-m", APPS[step.script], *step.overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", APPS[step.script], *step.overrides]
