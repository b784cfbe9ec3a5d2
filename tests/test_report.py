"""The comparison report from fake-but-valid runs: written with the evaluator's own
Prediction records and bootstrap, in the layout the training hook and evaluate.py write
(`scorers`); every number in the report must equal the results files (and the paired statistics
recomputed independently). Runs that differ beyond their axes say in which keys; runs that
differ only in the seed are aggregated."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from llava_ablate.eval.results import SCHEMA
from llava_ablate.eval.scoring import Prediction
from llava_ablate.eval.stats import (
    bootstrap_accuracy,
    mcnemar_exact,
    paired_comparison,
    wilson_accuracy,
)
from llava_ablate.report.collect import ResultsError
from llava_ablate.report.command import build
from llava_ablate.report.html import pct, render_html
from llava_ablate.report.wandb_report import build_report, save_report

CLASSES = ["cat", "dog", "owl", "fox"]


def _write_dataset(out: Path, name: str, correct: np.ndarray, hard: set[str], fp: str,
                   scorers: tuple[str, ...] = ("likelihood",),
                   image_aspect: str | None = None) -> dict:  # fmt: skip
    """One dataset's results as the evaluator writes them (eval/metrics.py: Wilson intervals),
    every scorer with the same answers."""
    out.mkdir(parents=True)
    labels = [CLASSES[i % len(CLASSES)] for i in range(len(correct))]
    preds = [
        Prediction(f"{name}-{i}", s, 0, lab, "A", "A" if c else "B", lab, bool(c))
        for s in scorers
        for i, (lab, c) in enumerate(zip(labels, correct, strict=True))
    ]
    (out / "predictions.jsonl").write_text("".join(json.dumps(asdict(p)) + "\n" for p in preds))
    mask = np.array([lab in hard for lab in labels])
    m = {
        "accuracy": wilson_accuracy(correct).as_dict(),
        "hard_accuracy": wilson_accuracy(correct[mask]).as_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(
        {"schema": SCHEMA, "model": None, "step": 20, "dataset": name,
         "n_questions": len(correct), "image_aspect": image_aspect,
         "question_set": {"fingerprint": fp}, "scorers": {s: m for s in scorers}}))  # fmt: skip
    with open(out / "per_class.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["class_name", "n", "hard", "accuracy", "ci_low", "ci_high"])
        w.writeheader()
        for cls in CLASSES:
            sel = correct[np.array(labels) == cls]
            est = bootstrap_accuracy(sel, 2000, 0)
            w.writerow({"class_name": cls, "n": len(sel), "hard": cls in hard,
                        "accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})  # fmt: skip
    return m


def _write_run(
    root: Path, llm: str, rng, p_right: dict[str, float], *, seed: int = 42, lr: float = 2e-5,
    log_every: int = 5, name: str | None = None, data: str = "toy_instruct",
    max_steps: int = 20, hard: set[str] | None = None,
) -> tuple[Path, dict]:  # fmt: skip
    run = root / (name or f"llm={llm}")
    run.mkdir(parents=True)
    arch = "qwen2" if "qwen" in llm else "llama"
    (run / "config.yaml").write_text(
        f"vision: {{name: tiny_clip}}\nllm: {{name: {llm}, arch: {arch}}}\n"
        f"projector: {{type: mlp2x_gelu}}\ndata: {{name: {data}}}\n"
        f"recipe: {{name: finetune, lr: {{llm: {lr:.1e}}}, max_steps: {max_steps}}}\n"
        "deepspeed: {name: zero2}\n"
        f"train: {{seed: {seed}, log_every: {log_every}}}\n"
    )
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 21))
    )
    files = {}
    for ds, p in p_right.items():
        correct = rng.random(400) < p
        files[ds] = (correct, _write_dataset(run / "eval/step_20" / ds, ds, correct,
                                             {"owl"} if hard is None else hard, f"fp-{ds}"))  # fmt: skip
    # An earlier evaluation that the report must ignore (it reads the latest step).
    _write_dataset(run / "eval/step_10" / "digits", "digits", np.zeros(400, bool), {"owl"}, "x")
    return run, files


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(7)
    base = _write_run(tmp_path / "grid", "tiny_llama", rng, {"digits": 0.55, "shapes": 0.7})
    var = _write_run(tmp_path / "grid", "tiny_qwen2", rng, {"digits": 0.75, "shapes": 0.72})
    return tmp_path / "grid", base, var


def _args(paths, **kw):
    """`llava-ablate report <paths>`'s arguments, as its own parser gives them, then `kw`."""
    import argparse

    from llava_ablate.report.command import add_report_command

    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers())
    parsed = vars(parser.parse_args(["report", *map(str, paths)]))
    parsed.update(paths=paths, baseline="tiny_llama")  # the paths as given (not str'd)
    return argparse.Namespace(**{**parsed, **kw})


def _report_data(html: str) -> dict:
    start = html.index('id="report-data">') + len('id="report-data">')
    return json.loads(html[start : html.index("</script>", start)].replace("<\\/", "</"))


def test_html_report_values_deltas_and_cis_equal_the_results_files(two_runs):
    grid, (base_dir, base_files), (var_dir, var_files) = two_runs
    runs, base, items = build(_args([str(grid)]))
    assert [r.label for r in runs] == ["tiny_llama", "tiny_qwen2"]
    assert all(r.differs == {} and len(r.config_hash) == 8 for r in runs)
    html = render_html(runs, base, items, title="t", exposure={"cat": 0, "dog": 10, "owl": 1000},
                       n_boot=2000, seed=0)  # fmt: skip
    data = _report_data(html)
    for label, files in (("tiny_llama", base_files), ("tiny_qwen2", var_files)):
        for ds, (_, m) in files.items():
            shown = data["variants"][label]["datasets"][ds]
            assert shown["accuracy"] == m["accuracy"]  # exact, straight from metrics.json
            assert shown["hard"] == m["hard_accuracy"]
            acc = m["accuracy"]
            assert f"{pct(acc['value'])} <span class=\"ci\">[{pct(acc['ci_low'])}, " \
                   f"{pct(acc['ci_high'])}]" in html  # fmt: skip
    overall = [d for d in data["deltas"] if d["subset"] == "all questions"]
    assert len(overall) == 2 and len(data["deltas"]) == 4
    assert all(d.single_seed for d in items) and "single seed" in html
    for d in overall:
        assert d["seeds"] == "single seed"
        a, b = base_files[d["dataset"]][0], var_files[d["dataset"]][0]
        assert d["delta"] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        assert d["delta"] == pytest.approx(
            var_files[d["dataset"]][1]["accuracy"]["value"]
            - base_files[d["dataset"]][1]["accuracy"]["value"], abs=1e-12)  # fmt: skip
        ref = paired_comparison(a, b, 2000, 0)
        assert (d["delta_ci_low"], d["delta_ci_high"]) == (ref.delta_ci_low, ref.delta_ci_high)
        assert d["delta_ci_low"] < d["delta"] < d["delta_ci_high"]
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        assert (d["a_only"], d["b_only"]) == (a_only, b_only)
        assert d["mcnemar_p"] == mcnemar_exact(a_only, b_only)
        assert f'{100 * d["delta"]:+.2f} <span class="ci">[{100 * d["delta_ci_low"]:+.2f}' in html
    digits = next(d for d in overall if d["dataset"] == "digits")
    assert digits["mcnemar_p"] < 0.001  # 55% -> 75% on 400 questions is a real difference
    # The hard classes (owl: every 4th question) get the same paired CI and McNemar test.
    hard = [d for d in data["deltas"] if d["subset"] == "hard classes"]
    assert [d["dataset"] for d in hard] == ["digits", "shapes"] and "Hard-class deltas" in html
    owl = np.arange(400) % len(CLASSES) == CLASSES.index("owl")
    for d in hard:
        a, b = base_files[d["dataset"]][0][owl], var_files[d["dataset"]][0][owl]
        ref = paired_comparison(a, b, 2000, 0)
        assert d["n"] == 100 and d["delta"] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        assert d["acc_a"] == pytest.approx(base_files[d["dataset"]][1]["hard_accuracy"]["value"])
        assert (d["delta_ci_low"], d["delta_ci_high"]) == (ref.delta_ci_low, ref.delta_ci_high)
        assert d["mcnemar_p"] == mcnemar_exact(int((a & ~b).sum()), int((~a & b).sum()))
    assert "Hard-class accuracy" in html and "accuracy by concept exposure" in html
    # Exposure groups: one per distinct count (fox has none), accuracy pooled over the group.
    assert all(f'text-anchor="middle">{x}</text>' in html for x in ("0", "10", "1000"))
    cat = np.arange(400) % len(CLASSES) == CLASSES.index("cat")
    assert f"{pct(base_files['digits'][0][cat].mean())}% [" in html
    assert "<svg" in html and "Training loss" in html
    assert "arch: llama" in html  # each variant's exact config
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_report_refuses_different_question_sets(two_runs):
    grid, _, (var_dir, _) = two_runs
    m_file = var_dir / "eval/step_20/digits/metrics.json"
    m = json.loads(m_file.read_text())
    m["question_set"]["fingerprint"] = "other"
    m_file.write_text(json.dumps(m))
    with pytest.raises(ResultsError, match="different question sets"):
        build(_args([str(grid)]))
    with pytest.raises(ResultsError, match="matches 0 variants"):
        build(_args([str(grid)], baseline="llm=nope"))


def test_training_hook_results_of_earlier_versions_are_still_read(two_runs):
    """A finished run cannot re-run its hook's evaluation in place: the hook's earlier shape
    (the fingerprint at the top, no schema, no question_set) is read as schema 1."""
    grid, _, (var_dir, _) = two_runs
    m_file = var_dir / "eval/step_20/digits/metrics.json"
    m = json.loads(m_file.read_text())
    for key in ("schema", "model", "image_aspect"):
        m.pop(key)
    m["fingerprint"] = m.pop("question_set")["fingerprint"]
    m_file.write_text(json.dumps(m))
    runs, _, items = build(_args([str(grid)]))
    assert items and {r.datasets["digits"].fingerprint for r in runs} == {"fp-digits"}


def test_legacy_metrics_layout_is_refused_naming_the_file(two_runs):
    grid, _, (var_dir, _) = two_runs
    m_file = var_dir / "eval/step_20/digits/metrics.json"
    m = json.loads(m_file.read_text())
    m["likelihood"] = m.pop("scorers")["likelihood"]  # the layout nothing writes any more
    m_file.write_text(json.dumps(m))
    with pytest.raises(ResultsError, match=f"{m_file}.*scorers"):
        build(_args([str(grid)]))


def test_report_names_the_keys_runs_differ_in_beyond_the_axes(tmp_path):
    rng = np.random.default_rng(3)
    grid = tmp_path / "grid"
    p = {"digits": 0.6}
    _write_run(grid, "tiny_llama", rng, p, name="a")
    _write_run(grid, "tiny_qwen2", rng, p, name="b", log_every=1)  # cadence: not a difference
    _write_run(grid, "tiny_llama", rng, p, name="c", lr=1e-4)
    runs, base, items = build(_args([str(grid)], baseline="a"))
    # llm.arch differs too, but only with the llm axis: the axis explains it. The labels name
    # the axis; the lr enters a label only where two variants would otherwise share it. Rows:
    # the grid's order (the llm options as found), then alphabetical.
    assert [r.path.name for r in runs] == ["c", "a", "b"]
    assert [r.differs for r in runs] == [{"recipe.lr.llm": 1e-4}, {"recipe.lr.llm": 2e-5},
                                         {"recipe.lr.llm": 2e-5}]  # fmt: skip
    assert [r.label for r in runs] == ["tiny_llama (recipe.lr.llm=0.0001)",
                                       "tiny_llama (recipe.lr.llm=2e-05)",
                                       "tiny_qwen2"]  # fmt: skip
    assert len({r.config_hash for r in runs}) == 3 and len(items) == 4  # 2 overall, 2 hard
    html = render_html(runs, base, items, title="t", n_boot=200, seed=0)
    assert "beyond the axes" in html and "<code>recipe.lr.llm=0.0001</code>" in html
    assert _report_data(html)["variants"]["tiny_llama (recipe.lr.llm=0.0001)"]["differs"] == {
        "recipe.lr.llm": 1e-4}  # fmt: skip


def test_runs_differing_only_in_seed_are_aggregated_over_seeds_and_questions(tmp_path):
    rng = np.random.default_rng(11)
    grid = tmp_path / "grid"
    base_p, var_p = [0.50, 0.62, 0.56], [0.70, 0.57, 0.66]  # seeds move accuracy a lot
    files = {}
    for llm, ps in (("tiny_llama", base_p), ("tiny_qwen2", var_p)):
        for seed, pr in enumerate(ps, start=1):
            run, f = _write_run(grid, llm, rng, {"digits": pr}, seed=seed, name=f"{llm}-s{seed}")
            files[(llm, seed)] = f["digits"]
    runs, base, items = build(_args([str(grid)], baseline="tiny_llama"))
    assert [r.label for r in runs][:3] == [f"tiny_llama, seed={s}" for s in (1, 2, 3)]
    assert base.label == "tiny_llama" and base.seeds == [1, 2, 3]
    d, hard = items  # all questions, then the hard classes' own seeds x questions comparison
    assert not d.single_seed and d.seeds == "3 vs 3 seeds"
    assert hard.subset == "hard classes" and hard.seeds == "3 vs 3 seeds"
    assert hard.comparison.n == 100 and hard.comparison.mcnemar_p is None
    accs = {k: v[1]["accuracy"]["value"] for k, v in files.items()}
    mean_a = np.mean([accs[("tiny_llama", s)] for s in (1, 2, 3)])
    mean_b = np.mean([accs[("tiny_qwen2", s)] for s in (1, 2, 3)])
    c = d.comparison
    assert c.delta == pytest.approx(mean_b - mean_a, abs=1e-12)
    assert c.delta_ci_low < c.delta < c.delta_ci_high
    # Wider than any one pair's question-only interval: the seed variance is in it.
    for s in (1, 2, 3):
        one = paired_comparison(files[("tiny_llama", s)][0], files[("tiny_qwen2", s)][0], 2000, 0)
        assert c.delta_ci_high - c.delta_ci_low > one.delta_ci_high - one.delta_ci_low
    assert c.mcnemar_p is None
    html = render_html(runs, base, items, title="t", n_boot=2000, seed=0)
    data = _report_data(html)
    assert "Spread over training seeds" in html and "3 vs 3 seeds" in html
    (spread,) = [s for s in data["seed_spreads"] if s["variant"] == "tiny_qwen2"]
    values = [accs[("tiny_qwen2", s)] for s in (1, 2, 3)]
    assert spread["values"] == values and spread["seeds"] == [1, 2, 3]
    assert spread["sd"] == pytest.approx(np.std(values, ddof=1))


def test_seed_interval_reduces_to_question_noise_without_seed_variance():
    from llava_ablate.report.compare import seed_question_bootstrap

    rng = np.random.default_rng(5)
    a, b = rng.random(800) < 0.55, rng.random(800) < 0.65
    lo, hi = seed_question_bootstrap(np.stack([a] * 3), np.stack([b] * 3), 4000, 1)
    ref = paired_comparison(a, b, 4000, 1)
    assert lo == pytest.approx(ref.delta_ci_low, abs=0.01)
    assert hi == pytest.approx(ref.delta_ci_high, abs=0.01)


def test_wandb_report_model_has_the_sections_as_panels_grouped_by_axis(two_runs):
    import wandb_workspaces.reports.v2 as wr

    grid, *_ = two_runs
    runs, base, items = build(_args([str(grid)]))
    report = build_report(runs, base, items, project="p", entity="e", group="tiny_2x2",
                          title="T")  # fmt: skip
    heads = [b.text for b in report.blocks if isinstance(b, wr.H2)]
    assert heads == ["Accuracy per dataset by llm", "Hard-class accuracy by llm",
                     "Training curves by llm", "Deltas against tiny_llama", "Variants"]  # fmt: skip
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    bars = [p for g in grids for p in g.panels if isinstance(p, wr.BarPlot)]
    assert sorted(m for p in bars for m in p.metrics) == [
        "eval/digits/accuracy", "eval/digits/hard_accuracy",
        "eval/shapes/accuracy", "eval/shapes/hard_accuracy"]  # fmt: skip
    lines = [p for g in grids for p in g.panels if isinstance(p, wr.LinePlot)]
    assert ["train/loss"] in [p.y for p in lines]
    assert all(p.groupby == "llm" for p in bars + lines)
    assert all(rs.groupby == ["llm"] and "tiny_2x2" in rs.filters
               for g in grids for rs in g.runsets)  # fmt: skip
    table = next(b for b in report.blocks if isinstance(b, wr.MarkdownBlock)).text
    digits = next(d for d in items if d.dataset == "digits").comparison
    assert f"{100 * digits.delta:+.2f}" in table
    assert sum(isinstance(b, wr.CodeBlock) for b in report.blocks) == 2


def test_save_report_is_the_only_network_call_and_explains_failures():
    class Fake:
        url = "https://wandb.ai/e/p/reports/x"

        def __init__(self, fail):
            self.fail, self.saved = fail, False

        def save(self):
            if self.fail:
                raise ValueError("no api key")
            self.saved = True

    ok = Fake(False)
    assert save_report(ok) == Fake.url and ok.saved
    with pytest.raises(RuntimeError, match="wandb login"):
        save_report(Fake(True))


def test_loss_axis_fits_the_data_and_labels_steps():
    import re

    from llava_ablate.report.svg import line_chart

    svg = line_chart("loss", {"a": [(s, 6.2 - 0.001 * s) for s in range(10, 210, 10)]},
                     "optimizer step", "loss")  # fmt: skip
    labels = [
        float(t.replace(",", ""))
        for t in re.findall(r'text-anchor="(?:end|middle)">([\d.,]+)<', svg)
    ]
    y = [v for v in labels if v < 10]
    x = [v for v in labels if v >= 10]
    assert min(y) >= 5.9 and max(y) <= 6.3 and len(y) >= 3  # not 0-based: 6.0-6.2 is visible
    assert x[0] >= 10 and x[-1] <= 200 and len(x) >= 4  # steps are labelled along the x axis


def test_exposure_groups_pool_the_questions_of_their_classes():
    from llava_ablate.eval.stats import wilson_accuracy
    from llava_ablate.report.exposure import binned_accuracy, exposure_bins

    many = exposure_bins([0, 1, 5, 7, 12, 99, 100, 2500])  # > 6 distinct counts: decades
    assert [b.label for b in many] == ["0", "1-9", "10-99", "100-999", "1,000-9,999"]
    few = exposure_bins([0, 3, 3, 60])
    assert [b.label for b in few] == ["0", "3", "60"] and not few[1].holds(3.5)
    rows = [{"class_name": c, "n": n, "accuracy": a}
            for c, n, a in (("cat", 4, 0.5), ("dog", 6, 1.0), ("owl", 5, 0.2))]  # fmt: skip
    got = binned_accuracy(rows, {"cat": 3, "dog": 3, "owl": 60, "fox": 0}, few)
    assert got[0] is None  # fox is in no run's results
    ref = wilson_accuracy(np.array([1] * 8 + [0] * 2))  # cat 2/4 + dog 6/6 right
    assert (got[1].value, got[1].ci_low, got[1].ci_high) == (ref.value, ref.ci_low, ref.ci_high)
    assert got[1].classes == ["cat", "dog"] and got[2].questions == 5
