"""The demo's plan and summary over seeds, without training: each seed of the cheap arm gets
its own run directories, stage 2 starts from the same seed's stage 1, the default keeps
`make demo`'s runs, and the summary's spread over seeds is computed per seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llava_ablate.demo.__main__ import main, report_inputs
from llava_ablate.demo.plan import FULL, LLMS, OPTIONAL_LLMS, plan, run_dir_of
from llava_ablate.demo.summary import ArmScore, llm_axis_lines, seed_spread_lines


def _value(step, key: str) -> str:
    return next(o.split("=", 1)[1] for o in step.overrides if o.startswith(key + "="))


def test_each_seed_of_the_cheap_arms_gets_its_own_runs_from_its_own_stage1(tmp_path):
    steps = plan(tmp_path / "runs", tmp_path / "cache", tmp_path / "exp.csv", FULL,
                 LLMS + OPTIONAL_LLMS, seeds=(42, 1))  # fmt: skip
    assert steps[0].label == "pretrain mini-LM on class texts"  # once, whatever the seeds
    assert steps[0].done == tmp_path / "cache" / "mini_lm" / "build.json"
    train = [s for s in steps if s.script == "train.py"]
    # small_qwen2 and mini_lm: stage 1 + 2 data arms per seed; SmolLM2 (costly): the first seed.
    assert sorted((s.llm, s.seed) for s in train if s.label.startswith("stage 1")) == [
        ("mini_lm", 1), ("mini_lm", 42), ("small_qwen2", 1), ("small_qwen2", 42),
        ("smollm2_135m", 42)]  # fmt: skip
    stage2 = [s for s in train if s.label.startswith("stage 2")]
    assert sorted((s.llm, s.data, s.seed) for s in stage2) == sorted(
        [(llm, d, seed) for llm in LLMS for d in ("demo_base", "demo_extra") for seed in (42, 1)]
        + [("smollm2_135m", d, 42) for d in ("demo_base", "demo_extra")]
    )
    assert len({s.done for s in train}) == len(train) == 15  # no two runs share a directory
    assert len({s.label for s in steps}) == len(steps)  # log files are named by label
    stage1 = {(s.llm, s.seed): s.done for s in train if s.label.startswith("stage 1")}
    for s in train:
        assert _value(s, "train.seed") == str(s.seed)
        assert s.done == run_dir_of(s.overrides) / "export"  # what train.py will name it
    for s in stage2:
        assert _value(s, "recipe.init_from") == str(stage1[s.llm, s.seed]), s.label
    # The LLM axis is sample-matched: both small LLMs get the same steps in each stage.
    for stage in ("stage 1", "stage 2"):
        assert len({s.steps for s in train if s.llm in LLMS and s.label.startswith(stage)}) == 1
    # The seeds are in the run hash, so their directories differ only by it.
    qwen = sorted(s.done.parent.name for s in stage2 if s.llm == "small_qwen2")
    assert len({name.rsplit("-", 1)[0] for name in qwen}) == 2  # two data arms, two seeds each
    assert steps[-1].label == "baseline mini-CLIP zero-shot"
    # The report's inputs: each stage-2 run once, and the zero-shot row its files must carry.
    assert report_inputs(stage2, steps[-1].done.parent) == [
        *(str(s.done.parent) for s in stage2),
        str(tmp_path / "runs" / "mini_clip-zero_shot"),
    ]


def test_the_default_plan_is_expected_within_the_demo_budget(tmp_path):
    """`make demo`'s steps, as the progress bar announces them: within ~10 of the 15 minutes
    (a margin for a slower machine), each with a positive expectation."""
    steps = plan(tmp_path / "runs", tmp_path / "cache", tmp_path / "exp.csv", FULL)
    assert all(s.expected_s > 0 for s in steps)
    assert sum(s.expected_s for s in steps) <= 11 * 60
    with_smollm2 = plan(tmp_path / "runs", tmp_path / "cache", tmp_path / "exp.csv", FULL,
                        LLMS + OPTIONAL_LLMS)  # fmt: skip
    assert sum(s.expected_s for s in with_smollm2) > 20 * 60  # why it is not the default


def test_another_exposure_table_names_other_stage2_runs(tmp_path):
    """The demo names its exposure table by content: a table counted otherwise (e.g. before
    the leftmost-longest fix) is another path, hence other stage-2 runs, never reused ones."""

    def stage2(table):
        steps = plan(tmp_path / "runs", tmp_path / "cache", tmp_path / table, FULL)
        return {s.done for s in steps if s.label.startswith("stage 2")}

    assert stage2("exposure_demo_base-aaaa.csv").isdisjoint(stage2("exposure_demo_base-bbbb.csv"))


def test_default_seed_plans_the_runs_make_demo_already_has(tmp_path):
    """`--seeds` defaults to train.seed's own default: the same directories as before the
    option (and no seed tag in any label), so a finished `make demo` is reused."""
    steps = plan(tmp_path / "runs", tmp_path / "cache", tmp_path / "exp.csv", FULL)
    train = [s for s in steps if s.script == "train.py"]
    assert len(train) == 6 and all(s.seed == 42 for s in train)  # 2 LLMs x (stage 1 + 2 data)
    assert {s.llm for s in train} == set(LLMS)  # SmolLM2 only on request
    assert not any("seed" in s.label for s in steps)
    first = train[0]
    without = [o for o in first.overrides if not o.startswith("train.seed=")]
    assert run_dir_of(without) / "export" == first.done


def test_summary_spread_over_seeds_and_the_per_seed_data_delta():
    scores = [
        ArmScore("small_qwen2", "demo_base", 42, 0.40, 0.20),
        ArmScore("small_qwen2", "demo_extra", 42, 0.44, 0.30),
        ArmScore("small_qwen2", "demo_base", 1, 0.46, 0.10),
        ArmScore("small_qwen2", "demo_extra", 1, 0.46, 0.20),
        ArmScore("small_qwen2", "demo_base", 2, 0.43, 0.15),
        ArmScore("small_qwen2", "demo_extra", 2, 0.45, 0.25),
        ArmScore("smollm2_135m", "demo_base", 42, 0.9, 0.8),  # one seed: no spread
        ArmScore("smollm2_135m", "demo_extra", 42, 0.9, 0.9),
    ]
    lines = seed_spread_lines(scores)
    text = "\n".join(lines)
    assert "small_qwen2: spread over 3 seeds (42, 1, 2), name likelihood" in text
    assert "smollm2" not in text

    def row(start: str) -> list[str]:
        return next(line for line in lines if line.strip().startswith(start)).split()

    # accuracy of demo_base over seeds: 0.40, 0.46, 0.43 -> mean 0.430, sd 0.030, 0.400 - 0.460
    assert row("demo_base accuracy")[2:] == ["0.430", "0.030", "0.400", "-", "0.460"]
    assert row("demo_extra hard")[3:] == ["0.250", "0.050", "0.200", "-", "0.300"]
    # The data-axis delta, within each seed: +0.04, +0.00, +0.02 -> mean +0.020, sd 0.020.
    delta = next(line for line in lines if "delta demo_extra - demo_base, accuracy" in line)
    assert "+0.020  0.020  +0.000 - +0.040" in delta
    assert "+0.040 (seed 42), +0.000 (seed 1), +0.020 (seed 2)" in delta
    hard = next(line for line in lines if "delta demo_extra - demo_base, hard" in line)
    assert "+0.100  0.000  +0.100 - +0.100" in hard
    assert seed_spread_lines(scores[-2:]) == []  # a single-seed demo prints no spread


def test_llm_axis_is_the_per_seed_delta_on_the_same_samples():
    scores = [
        ArmScore("small_qwen2", "demo_base", 42, 0.40, 0.10),
        ArmScore("mini_lm", "demo_base", 42, 0.50, 0.20),
        ArmScore("small_qwen2", "demo_base", 1, 0.45, 0.10),
        ArmScore("mini_lm", "demo_base", 1, 0.44, 0.30),
        ArmScore("small_qwen2", "demo_extra", 42, 0.40, 0.30),
        ArmScore("mini_lm", "demo_extra", 42, 0.60, 0.50),
    ]
    lines = llm_axis_lines(scores)
    assert lines[1] == "LLM axis, mini_lm - small_qwen2 (same samples), name likelihood, per seed"
    text = "\n".join(lines)
    assert "demo_base accuracy      +0.100 (seed 42), -0.010 (seed 1)   NOT in every seed" in text
    assert "demo_base hard classes  +0.100 (seed 42), +0.200 (seed 1)   positive in every seed" in (
        text
    )
    assert "demo_extra accuracy      +0.200 (seed 42)   positive in every seed" in text
    assert llm_axis_lines(scores[:1]) == []  # one LLM: no axis


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "1", "1"], "each seed once"),
        (
            ["--llms", "smollm2_135m", "--seeds", "42", "1"],
            "extra seeds train only small_qwen2, mini_lm",
        ),  # fmt: skip
    ],
)
def test_seed_options_are_checked_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--runs-root", str(tmp_path / "runs")])
    assert message in capsys.readouterr().err
    assert not Path(tmp_path / "runs").exists()


def _fake_run(path: Path, runs_root: Path, seed: int, *, lr: float, init_from: str | None):
    """A run directory as train.py records it (config.yaml + run_identity.json), no training."""
    config = {"train": {"seed": seed, "runs_root": str(runs_root)}, "llm": {"name": "small_qwen2"},
              "recipe": {"name": "demo_finetune" if init_from else "demo_align",
                         "lr": {"projector": lr}, "init_from": init_from}}  # fmt: skip
    hashed = json.loads(json.dumps(config))
    del hashed["train"]["runs_root"]  # excluded from the identity, as run_identity does
    if init_from:
        hashed["recipe"]["init_from"] = init_from.replace(str(runs_root), "${train.runs_root}")
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "run_identity.json").write_text(json.dumps({"hash": f"h{seed}", "config": hashed}))
    return path


def test_report_aggregates_the_demo_seeds_of_one_arm(tmp_path):
    """Each seed's stage 2 starts from its own seed's stage 1: the init_from paths differ but the
    runs differ only in seed, so the report makes them one variant -- unless the stage-1 runs
    differ in something else, which then shows."""
    from llava_ablate.report.collect import label_runs, read_run

    root = tmp_path / "runs"
    runs = []
    for seed, lr1 in ((42, 1e-3), (1, 1e-3), (2, 5e-4)):
        s1 = _fake_run(root / f"s1-{seed}", root, seed, lr=lr1, init_from=None)
        runs.append(_fake_run(root / f"s2-{seed}", root, seed, lr=1e-4,
                              init_from=str(s1 / "export")))  # fmt: skip
    results = [read_run(r) for r in runs]
    label_runs(results)
    variants = [r.variant for r in results]
    assert variants[0] == variants[1]  # seeds 42 and 1: one variant over seeds
    assert variants[2] != variants[0]  # stage 1 at another lr: told apart, not averaged
    assert "recipe.init_from" in results[2].differs
