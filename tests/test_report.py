"""The comparison report from two fake-but-valid runs: written with the evaluator's own
Prediction records and bootstrap, in the training hook's layout; every number in the report
must equal the results files (and the paired statistics recomputed independently)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from llava_ablate.eval.scoring import Prediction
from llava_ablate.eval.stats import bootstrap_accuracy, mcnemar_exact, paired_comparison
from llava_ablate.report.collect import ResultsError
from llava_ablate.report.command import build
from llava_ablate.report.html import pct, render_html
from llava_ablate.report.wandb_report import build_report, save_report

CLASSES = ["cat", "dog", "owl", "fox"]


def _write_dataset(out: Path, name: str, correct: np.ndarray, hard: set[str], fp: str) -> dict:
    out.mkdir(parents=True)
    labels = [CLASSES[i % len(CLASSES)] for i in range(len(correct))]
    preds = [
        Prediction(f"{name}-{i}", "likelihood", 0, lab, "A", "A" if c else "B", lab, bool(c))
        for i, (lab, c) in enumerate(zip(labels, correct, strict=True))
    ]
    (out / "predictions.jsonl").write_text("".join(json.dumps(asdict(p)) + "\n" for p in preds))
    mask = np.array([lab in hard for lab in labels])
    m = {
        "accuracy": bootstrap_accuracy(correct, 2000, 0).as_dict(),
        "hard_accuracy": bootstrap_accuracy(correct[mask], 2000, 0).as_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(
        {"step": 20, "dataset": name, "n_questions": len(correct), "fingerprint": fp,
         "likelihood": m}))  # fmt: skip
    with open(out / "per_class.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["class_name", "n", "hard", "accuracy", "ci_low", "ci_high"])
        w.writeheader()
        for cls in CLASSES:
            sel = correct[np.array(labels) == cls]
            est = bootstrap_accuracy(sel, 2000, 0)
            w.writerow({"class_name": cls, "n": len(sel), "hard": cls in hard,
                        "accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})  # fmt: skip
    return m


def _write_run(root: Path, llm: str, rng, p_right: dict[str, float]) -> tuple[Path, dict]:
    run = root / f"llm={llm}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"vision: {{name: tiny_clip}}\nllm: {{name: {llm}, arch: llama}}\n"
        "projector: {type: mlp2x_gelu}\ndata: {name: toy_instruct}\nrecipe: {name: finetune}\n"
        "deepspeed: {name: zero2}\n"
    )
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 21))
    )
    files = {}
    for ds, p in p_right.items():
        correct = rng.random(400) < p
        files[ds] = (correct, _write_dataset(run / "eval/step_20" / ds, ds, correct, {"owl"},
                                             f"fp-{ds}"))  # fmt: skip
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
    import argparse

    defaults = dict(paths=paths, scorer="likelihood", baseline="llm=tiny_llama",
                    bootstrap=2000, seed=0)  # fmt: skip
    return argparse.Namespace(**{**defaults, **kw})


def _report_data(html: str) -> dict:
    start = html.index('id="report-data">') + len('id="report-data">')
    return json.loads(html[start : html.index("</script>", start)].replace("<\\/", "</"))


def test_html_report_values_deltas_and_cis_equal_the_results_files(two_runs):
    grid, (base_dir, base_files), (var_dir, var_files) = two_runs
    runs, base, items = build(_args([str(grid)]))
    assert [r.label for r in runs] == ["llm=tiny_llama", "llm=tiny_qwen2"]
    html = render_html(runs, base, items, title="t", exposure={"cat": 0, "dog": 10, "owl": 1000},
                       n_boot=2000, seed=0)  # fmt: skip
    data = _report_data(html)
    for label, files in (("llm=tiny_llama", base_files), ("llm=tiny_qwen2", var_files)):
        for ds, (_, m) in files.items():
            shown = data["variants"][label]["datasets"][ds]
            assert shown["accuracy"] == m["accuracy"]  # exact, straight from metrics.json
            assert shown["hard"] == m["hard_accuracy"]
            acc = m["accuracy"]
            assert f"{pct(acc['value'])} <span class=\"ci\">[{pct(acc['ci_low'])}, " \
                   f"{pct(acc['ci_high'])}]" in html  # fmt: skip
    assert len(data["deltas"]) == 2
    for d in data["deltas"]:
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
    digits = next(d for d in data["deltas"] if d["dataset"] == "digits")
    assert digits["mcnemar_p"] < 0.001  # 55% -> 75% on 400 questions is a real difference
    assert "Hard-class accuracy" in html and "per-class accuracy vs concept exposure" in html
    assert "<svg" in html and "Training loss" in html
    assert "arch: llama" in html  # each variant's exact config
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_report_refuses_different_question_sets(two_runs):
    grid, _, (var_dir, _) = two_runs
    m_file = var_dir / "eval/step_20/digits/metrics.json"
    m = json.loads(m_file.read_text())
    m["fingerprint"] = "other"
    m_file.write_text(json.dumps(m))
    with pytest.raises(ResultsError, match="different question sets"):
        build(_args([str(grid)]))
    with pytest.raises(ResultsError, match="matches 0 runs"):
        build(_args([str(grid)], baseline="llm=nope"))


def test_wandb_report_model_has_the_sections_as_panels_grouped_by_axis(two_runs):
    import wandb_workspaces.reports.v2 as wr

    grid, *_ = two_runs
    runs, base, items = build(_args([str(grid)]))
    report = build_report(runs, base, items, project="p", entity="e", group="tiny_2x2",
                          title="T")  # fmt: skip
    heads = [b.text for b in report.blocks if isinstance(b, wr.H2)]
    assert heads == ["Accuracy per dataset by llm", "Hard-class accuracy by llm",
                     "Training curves by llm", "Deltas against llm=tiny_llama", "Variants"]  # fmt: skip
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
