"""The report's tables agree everywhere (issue 17 §5, issue 20 §2-3): report.md/.csv/.tex and
the HTML are one table -- a row per variant with its seeds aggregated (mean, sd, n seeds), one
baseline row, the grid's order; the CLIP zero-shot results are their own row, the default
baseline of the paired tests; labels name the axes, other differing keys go to a footnote; one
interval method per quantity (Wilson for one accuracy, a seeded bootstrap for means), the same
in the terminal summary. Results files are written directly, as tests/test_report.py does."""

from __future__ import annotations

import csv
import json
import re
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import tomllib
from test_report import CLASSES, _report_data, _write_dataset, _write_run

from llava_ablate.cli import main as cli
from llava_ablate.eval.stats import mcnemar_exact

ROOT = Path(__file__).resolve().parents[1]


def _report(tmp_path: Path, paths: list[Path], *extra: str) -> dict:
    out = tmp_path / "out" / "report.html"
    cli(["report", *map(str, paths), "--out", str(out), "--bootstrap", "1000", *extra])
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"html": out.read_text(), "md": out.with_suffix(".md").read_text(),
            "tex": out.with_suffix(".tex").read_text(), "csv": rows,
            "cell": {(r["model"], r["column"]): r for r in rows}}  # fmt: skip


def _md_rows(md: str) -> list[list[str]]:
    lines = [x for x in md.splitlines() if x.startswith("| ") and not x.startswith("| model")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def _naive_bootstrap(mats: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float]:
    """Mean over datasets of the mean over seeds, resampling seeds and questions by index."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        s = rng.integers(0, len(mats[0]), len(mats[0]))
        out.append(np.mean([m[s][:, rng.integers(0, m.shape[1], m.shape[1])].mean() for m in mats]))
    return tuple(np.quantile(out, [0.025, 0.975]))


def _clip(root: Path, correct: dict[str, np.ndarray], hard=frozenset({"owl"})) -> Path:
    """evaluate.py model.type=clip results: scored `likelihood` (its option choice) only."""
    out = root / "mini_clip-zero_shot"
    for ds, c in correct.items():
        _write_dataset(out / ds, ds, c, set(hard), f"fp-{ds}", image_aspect="processor")
    (out / "run.json").write_text(json.dumps({"model_type": "clip", "model_path": "x"}))
    (out / "metrics.json").write_text(json.dumps({"model": "mini_clip"}))
    return out


def _seeded_grid(root: Path) -> tuple[list[Path], dict]:
    """2 LLMs x 3 seeds; the runs listed small_qwen2 first (the grid's order)."""
    rng = np.random.default_rng(2)
    paths, files = [], {}
    for llm, p in (("small_qwen2", 0.7), ("tiny_llama", 0.5)):
        for seed in (1, 2, 3):
            run, f = _write_run(root, llm, rng, {"digits": p + 0.04 * seed}, seed=seed,
                                name=f"{llm}-s{seed}")  # fmt: skip
            paths.append(run)
            files[(llm, seed)] = f["digits"]
    return paths, files


def test_tables_aggregate_seeds_exactly_as_the_html(tmp_path):
    paths, files = _seeded_grid(tmp_path / "grid")
    r = _report(tmp_path, paths, "--baseline", "tiny_llama-s1")  # a run dir names its variant
    rows = _md_rows(r["md"])
    # One row per variant, in the grid's order (as given), one baseline row, seeds aggregated.
    assert [x[0] for x in rows] == ["small_qwen2", "**tiny_llama** (baseline)"]
    assert r["md"].count("(baseline)") == 1 and [x[1] for x in rows] == ["3", "3"]
    table = _report_data(r["html"])["table"]
    assert [row["label"] for row in table["rows"]] == ["small_qwen2", "tiny_llama"]
    for llm, row in zip(("small_qwen2", "tiny_llama"), table["rows"], strict=True):
        values = [files[(llm, s)][1]["accuracy"]["value"] for s in (1, 2, 3)]
        csv_row = r["cell"][(llm, "digits")]
        html_cell = row["cells"]["digits"]
        assert float(csv_row["accuracy"]) == pytest.approx(np.mean(values), abs=1e-12)
        assert float(csv_row["sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert csv_row["seeds"] == "3" and csv_row["interval"] == "bootstrap"
        # The HTML shows the very same cell (value, sd, interval).
        assert (html_cell["value"], html_cell["sd"], html_cell["ci_low"], html_cell["ci_high"]) \
            == pytest.approx([float(csv_row[k]) for k in ("accuracy", "sd", "ci_low", "ci_high")])  # fmt: skip
        mats = [np.stack([files[(llm, s)][0] for s in (1, 2, 3)])]
        lo, hi = _naive_bootstrap(mats, 3000, 1)
        assert float(csv_row["ci_low"]) == pytest.approx(lo, abs=0.015)
        assert float(csv_row["ci_high"]) == pytest.approx(hi, abs=0.015)
        text = f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f} ["
        assert text in r["md"] and text[:-2].replace("±", r"$\pm$") in r["tex"]
    assert len(re.findall(r"^small\\_qwen2 ", r["tex"], re.M)) == 1


def test_zero_shot_baseline_is_a_row_with_paired_tests_against_it(tmp_path):
    """The demo's case: the MLLMs scored by `name_likelihood`, the CLIP results (evaluate.py
    model.type=clip) by their option choice on the same frozen questions."""
    rng = np.random.default_rng(4)
    grid = tmp_path / "grid"
    runs = {}
    for llm, p in (("small_qwen2", 0.8), ("tiny_llama", 0.4)):
        run = grid / llm
        _write_run(grid, llm, rng, {}, name=llm)
        correct = rng.random(300) < p
        _write_dataset(run / "eval/step_20/digits", "digits", correct, {"owl"}, "fp-digits",
                       scorers=("name_likelihood", "likelihood"),
                       image_aspect="pad" if llm == "small_qwen2" else None)  # fmt: skip
        runs[llm] = correct
    clip_correct = rng.random(300) < 0.6
    clip = _clip(tmp_path, {"digits": clip_correct})
    r = _report(tmp_path, [grid, clip], "--scorer", "name_likelihood")
    rows = _md_rows(r["md"])
    assert [x[0] for x in rows] == ["**mini_clip zero-shot** (baseline)", "small_qwen2",
                                    "tiny_llama"]  # fmt: skip
    assert rows[0][1] == "-"  # no training seeds
    clip_row = r["cell"][("mini_clip zero-shot", "digits")]
    assert clip_row["zero_shot"] == "True" and clip_row["baseline"] == "True"
    assert float(clip_row["accuracy"]) == pytest.approx(clip_correct.mean())
    assert r"mini\_clip zero-shot \emph{(baseline)}" in r["tex"]
    assert "zero-shot rows: the most similar of the same options, likelihood" in r["md"]
    data = _report_data(r["html"])
    assert data["table"]["rows"][0]["zero_shot"] and data["baseline"] == "mini_clip zero-shot"
    assert '<span class="series-label">mini_clip zero-shot</span>' in r["html"]  # the bar chart
    # Paired tests against the CLIP row, recomputed from the per-question answers.
    for llm, correct in runs.items():
        (d,) = [x for x in data["deltas"] if x["variant"] == llm and x["subset"] == "all questions"]
        a_only, b_only = int((clip_correct & ~correct).sum()), int((~clip_correct & correct).sum())
        assert d["mcnemar_p"] == mcnemar_exact(a_only, b_only)
        assert float(r["cell"][(llm, "digits")]["mcnemar_p"]) == pytest.approx(d["mcnemar_p"])
        assert d["delta"] == pytest.approx(correct.mean() - clip_correct.mean())
    assert r["cell"][("small_qwen2", "digits")]["significant"] == "up"  # 0.8 vs 0.6, n=300
    # How the images reached each model, as its metrics.json records it, in every table.
    images = (
        "Images as each model read them -- the zero-shot tower's resize and centre crop: "
        "mini_clip zero-shot; padded to a square (LLaVA-1.5's protocol): small_qwen2; not "
        "recorded: tiny_llama."
    )
    assert images in r["md"] and "padded to a square" in r["html"]
    assert r"padded to a square (LLaVA-1.5's protocol): small\_qwen2" in r["tex"]
    assert r["cell"][("small_qwen2", "digits")]["image_aspect"] == "pad"
    assert r["cell"][("mini_clip zero-shot", "digits")]["image_aspect"] == "processor"
    assert r["cell"][("tiny_llama", "digits")]["significant"] == "down"


def test_labels_name_the_axes_and_other_keys_go_to_a_footnote(tmp_path):
    """The demo's 2 x 2: max_steps goes with the LLM (compute-matched), not an axis."""
    rng = np.random.default_rng(8)
    grid = tmp_path / "grid"
    for llm, steps in (("small_qwen2", 240), ("smollm2_135m", 24)):
        for data in ("demo_base", "demo_extra"):
            _write_run(grid, llm, rng, {"digits": 0.5}, data=data, max_steps=steps,
                       name=f"{llm}-{data}")  # fmt: skip
    r = _report(tmp_path, [grid / f"{llm}-{d}" for llm in ("small_qwen2", "smollm2_135m")
                           for d in ("demo_base", "demo_extra")],
                "--baseline", "small_qwen2 x demo_extra")  # typed without the `×`  # fmt: skip
    assert _md_rows(r["md"])[1][0] == "**small_qwen2 × demo_extra** (baseline)"
    labels = [x[0].replace("**", "").replace(" (baseline)", "") for x in _md_rows(r["md"])]
    assert labels == ["small_qwen2 × demo_base", "small_qwen2 × demo_extra",
                      "smollm2_135m × demo_base", "smollm2_135m × demo_extra"]  # fmt: skip
    assert ("recipe.max_steps -- small_qwen2 × demo_base: 240; small_qwen2 × demo_extra: 240; "
            "smollm2_135m × demo_base: 24; smollm2_135m × demo_extra: 24") in r["md"]  # fmt: skip
    assert (
        r["cell"][("smollm2_135m × demo_extra", "digits")]["beyond_axes"] == "recipe.max_steps=24"
    )
    assert "recipe.max\\_steps -- small\\_qwen2 $\\times$ demo\\_base: 240" in r["tex"]
    assert "recipe.max_steps -- small_qwen2 × demo_base: 240" in r["html"]
    assert _report_data(r["html"])["variants"]["small_qwen2 × demo_base"]["differs"] == {
        "recipe.max_steps": 240}  # fmt: skip


def test_one_interval_method_per_quantity_and_none_outside_0_100(tmp_path):
    """A hard-class accuracy of 0: the results file's Wilson interval everywhere (it read
    `0.0 [-3.6, 3.6]` in report.md and `[0.000, 0.071]` in the terminal); a mean over datasets:
    the seeded bootstrap over questions (no normal approximation)."""
    rng = np.random.default_rng(6)
    grid = tmp_path / "grid"
    files = {}
    for llm, p in (("small_qwen2", 0.6), ("tiny_llama", 0.5)):
        run, f = _write_run(grid, llm, rng, {"digits": p, "shapes": p}, name=llm)
        files[llm] = f
        for ds in ("digits", "shapes"):  # every hard-class ("owl") question wrong
            preds = run / "eval/step_20" / ds / "predictions.jsonl"
            lines = [json.loads(x) for x in preds.read_text().splitlines()]
            for x in lines:
                x["correct"] = x["correct"] and x["label"] != "owl"
            preds.write_text("".join(json.dumps(x) + "\n" for x in lines))
            correct = np.array([x["correct"] for x in lines])
            mask = np.array([x["label"] == "owl" for x in lines])
            from llava_ablate.eval.stats import wilson_accuracy

            m = json.loads((run / "eval/step_20" / ds / "metrics.json").read_text())
            m["scorers"]["likelihood"]["accuracy"] = wilson_accuracy(correct).as_dict()
            m["scorers"]["likelihood"]["hard_accuracy"] = wilson_accuracy(correct[mask]).as_dict()
            (run / "eval/step_20" / ds / "metrics.json").write_text(json.dumps(m))
            files[llm][ds] = (correct, m["scorers"]["likelihood"])
    # One dataset: `hard` is that dataset's hard-class accuracy with its Wilson interval.
    one = _report(tmp_path / "one", [grid], "--baseline", "tiny_llama")
    for r in (one,):
        for row in r["csv"]:
            if row["ci_low"]:
                assert 0 <= float(row["ci_low"]) <= float(row["accuracy"]) <= float(
                    row["ci_high"]) <= 1, row  # fmt: skip
    hard = files["small_qwen2"]["digits"][1]["hard_accuracy"]
    assert hard["value"] == 0 and hard["ci_high"] > 0
    wilson = f"0.0 [0.0, {100 * hard['ci_high']:.1f}]"
    digits_hard = one["cell"][("small_qwen2", "digits (hard)")]
    assert digits_hard["interval"] == "wilson"
    assert (float(digits_hard["ci_low"]), float(digits_hard["ci_high"])) == (
        hard["ci_low"], hard["ci_high"])  # fmt: skip
    assert "-" not in "".join(re.findall(r"\[[^\]]*\]", one["md"]))  # no negative bound
    # Two datasets: average and hard are means over datasets: the bootstrap over questions.
    for col, key in (("average", "accuracy"), ("hard", "hard_accuracy")):
        row = one["cell"][("small_qwen2", col)]
        assert row["interval"] == "bootstrap"
        assert float(row["accuracy"]) == pytest.approx(
            np.mean([files["small_qwen2"][d][1][key]["value"] for d in ("digits", "shapes")])
        )
        if col == "average":
            mats = [files["small_qwen2"][d][0][None] for d in ("digits", "shapes")]
            lo, hi = _naive_bootstrap(mats, 3000, 2)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((lo, hi),
                                                                                  abs=0.01)  # fmt: skip
    # The terminal summary prints the table's intervals: one dataset (digits only).
    only = tmp_path / "digits-only"
    for llm in ("small_qwen2", "tiny_llama"):
        _write_run(only, llm, np.random.default_rng(0), {}, name=llm)
        src = grid / llm / "eval/step_20/digits"
        dst = only / llm / "eval/step_20/digits"
        dst.mkdir(parents=True)
        for f in src.iterdir():
            (dst / f.name).write_text(f.read_text())
    from llava_ablate.report.summary import grid_summary

    text = grid_summary([only], scorers=["likelihood"], llms=("tiny_llama", "small_qwen2"),
                        data=("toy_instruct", "x"), wall_s=None, n_boot=500)  # fmt: skip
    md = _report(tmp_path / "two", [only])["md"]
    line = next(x for x in text.splitlines() if x.startswith("small_qwen2"))
    assert wilson in line and wilson in md


def test_demo_summary_ends_with_the_wall_time_and_the_two_findings(tmp_path):
    from llava_ablate.eval.stats import paired_comparison
    from llava_ablate.report.summary import grid_summary

    rng = np.random.default_rng(9)
    grid = tmp_path / "grid"
    answers = {}
    owl = np.arange(400) % len(CLASSES) == CLASSES.index("owl")
    for llm, p in (("small_qwen2", 0.4), ("mini_lm", 0.7)):
        for data, hard_p in (("demo_base", 0.1), ("demo_extra", 0.5)):
            run = grid / f"{llm}-{data}"
            _write_run(grid, llm, rng, {}, data=data, name=run.name)
            correct = np.where(owl, rng.random(400) < hard_p, rng.random(400) < p)
            # The demo's one dataset, under its own name (the demo's summary reads it by name).
            _write_dataset(run / "eval/step_20/mini_classify", "mini_classify", correct, {"owl"},
                           "fp-mini_classify",
                           scorers=("name_likelihood", "likelihood"))  # fmt: skip
            answers[(llm, data)] = correct
    clip = _clip(tmp_path, {"mini_classify": rng.random(400) < 0.5})
    text = grid_summary([grid, clip], scorers=["name_likelihood", "likelihood"],
                        llms=("small_qwen2", "mini_lm"), data=("demo_base", "demo_extra"),
                        wall_s=754.2, n_boot=2000, seed=0)  # fmt: skip
    lines = text.splitlines()
    assert lines[-4] == "Wall time: 12 min 34 s."
    llm_line, data_line, letter_line = lines[-3:]
    assert llm_line.startswith("LLM axis, mini_lm - small_qwen2 (same stage-2 samples, "
                               "mini_classify, name_likelihood)")  # fmt: skip
    assert data_line.startswith("DATA axis, demo_extra - demo_base (same LLM")
    # The letter answer's LLM axis too (the same answers here: the same deltas).
    assert letter_line.startswith("LLM axis, mini_lm - small_qwen2 (same stage-2 samples, "
                                  "mini_classify, likelihood)")  # fmt: skip

    def pp(a, b, mask) -> str:
        c = paired_comparison(a[mask], b[mask], 2000, 0)
        holds = "excludes" if c.delta_ci_low > 0 or c.delta_ci_high < 0 else "includes"
        return (f"{100 * c.delta:+.1f} pp [{100 * c.delta_ci_low:+.1f}, "
                f"{100 * c.delta_ci_high:+.1f}] (single seed; {holds} 0)")  # fmt: skip

    everything = np.ones(400, bool)
    for data in ("demo_base", "demo_extra"):
        a, b = answers[("small_qwen2", data)], answers[("mini_lm", data)]
        assert f"data={data}: hard classes {pp(a, b, owl)}, all questions " \
               f"{pp(a, b, everything)}" in llm_line  # fmt: skip
    for llm in ("small_qwen2", "mini_lm"):
        a, b = answers[(llm, "demo_base")], answers[(llm, "demo_extra")]
        assert f"llm={llm}: hard classes {pp(a, b, owl)}" in data_line
    # The table above uses the report's rows: the CLIP row first, each scorer.
    assert lines[1].startswith("mini_clip zero-shot (baseline)")
    assert sum(x.startswith("variant (") for x in lines) == 2
    # The demo prints exactly this for its stage-2 steps and its baseline.
    from llava_ablate.demo.plan import LLMS, Step
    from llava_ablate.demo.summary import summary

    assert LLMS[:2] == ("small_qwen2", "mini_lm")
    steps = [Step(f"stage 2 {k}", "train.py", [], grid / f"{k[0]}-{k[1]}" / "export", 1, *k, 42)
             for k in answers]  # fmt: skip
    printed = summary(steps, clip, 754.2)
    # The demo's own per-seed LLM-axis lines, then the report's table, the wall time and the
    # two findings, exactly as above.
    assert printed.splitlines()[-4:] == lines[-4:]
    assert "mini_clip zero-shot (baseline)" in printed
    assert printed.splitlines()[1].startswith("LLM axis, mini_lm - small_qwen2 (same samples)")


def test_report_templates_ship_as_package_data():
    """The page is built from one Jinja2 template per section, which the wheel must hold."""
    from llava_ablate.report.html import environment

    templates = sorted((ROOT / "llava_ablate/report/templates").iterdir())
    names = environment().list_templates()
    for section in ("accuracy", "hard", "deltas", "seeds", "plots", "runs", "page"):
        assert f"{section}.html.j2" in names
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["llava_ablate"]  # fmt: skip
    for t in templates:
        rel = t.relative_to(ROOT / "llava_ablate").as_posix()
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} is not package data"


def test_wandb_report_groups_by_the_trained_runs_axes_beside_a_zero_shot_row(tmp_path):
    """The zero-shot results have no axes (and no W&B run): they must not make every axis of
    the trained runs look varied."""
    import wandb_workspaces.reports.v2 as wr
    from test_report import _args

    from llava_ablate.report.command import build
    from llava_ablate.report.wandb_report import build_report

    rng = np.random.default_rng(1)
    grid = tmp_path / "grid"
    for llm in ("tiny_llama", "tiny_qwen2"):
        _write_run(grid, llm, rng, {"digits": 0.5}, name=llm)
    clip = _clip(tmp_path, {"digits": rng.random(400) < 0.5})
    runs, base, items = build(_args([str(grid), str(clip)], baseline=None))
    assert base.label == "mini_clip zero-shot"
    report = build_report(runs, base, items, project="p", entity="e", group="g", title="T")
    heads = [b.text for b in report.blocks if isinstance(b, wr.H2)]
    assert [h for h in heads if " by " in h] == ["Accuracy per dataset by llm",
                                                 "Hard-class accuracy by llm",
                                                 "Training curves by llm"]  # fmt: skip
