"""The embedded default, reduced: the README's main command (both small LLMs: random-init and
text-pretrained) with fewer steps. Real data, the mini-LM pre-trained for real, real DeepSpeed
runs on 2 CPU ranks, the real evaluator and report."""

from __future__ import annotations

import json

import pytest

from llava_ablate.demo.__main__ import main
from llava_ablate.report.collect import read_dataset, read_run


@pytest.mark.slow
def test_demo_quick_grid_is_above_chance_and_reported(cache_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = [
        "--quick",
        "--runs-root",
        str(runs),
        "--cache-dir",
        str(cache_dir),
    ]
    report = main(args)
    assert report.exists() and "demo_extra" in report.read_text()
    captured = capsys.readouterr()
    out = captured.out
    assert "chance = 1/26" in out and "mini_clip zero-shot (baseline)" in out
    assert "LLM axis, mini_lm - small_qwen2 (same samples)" in out
    assert "Wall time: " in out and "DATA axis, demo_extra - demo_base" in out
    assert "wall time" in out.splitlines()[-1]  # the summary ends with the wall time
    assert "idle cores" not in out.splitlines()[-1]  # what was measured, not a projection
    # The report's files, not only the terminal, carry the tower's zero-shot row as baseline.
    html = report.read_text()
    assert "mini_clip zero-shot" in _accuracy_figure(html)  # the accuracy plot and its legend
    for suffix, label in ((".md", "mini_clip zero-shot"), (".csv", "mini_clip zero-shot"),
                          (".tex", r"mini\_clip zero-shot")):  # fmt: skip
        assert label in report.with_suffix(suffix).read_text(), suffix
    assert "against mini_clip zero-shot" in out  # the paired tests are against it
    # The letter answer's report: the same runs and axes, scored by the option letter.
    letter = report.with_name("report_letter.html").read_text()
    assert "mini_clip zero-shot" in _accuracy_figure(letter)
    table = report.with_name("report_letter.md").read_text()
    assert "of the likelihood scorer" in table and "name_likelihood" not in table
    assert "(expected ~" in captured.err  # the bar shows each step's expected time
    stage2 = sorted(runs.glob("*-mini_clip-mlp2x_gelu-demo_*-demo_finetune-*"))
    assert [p.name.split("-")[0] for p in stage2] == ["mini_lm"] * 2 + ["small_qwen2"] * 2
    assert [p.name.split("-")[3] for p in stage2] == ["demo_base", "demo_extra"] * 2
    fingerprints = set()
    for run in stage2:
        result = read_run(run, "name_likelihood").datasets["mini_classify"]
        assert result.accuracy.n == 120  # 30 classes x 4 test images, 26 options each
        assert result.accuracy.ci_low > 1 / 26, (run.name, result.accuracy)  # above chance
        assert result.hard is not None  # hard = the 10 least-exposed classes of demo_base
        fingerprints.add(result.fingerprint)
    clip = read_dataset(runs / "mini_clip-zero_shot" / "mini_classify", "likelihood")
    fingerprints.add(clip.fingerprint)
    assert len(fingerprints) == 1  # every model answered the same frozen questions
    assert clip.accuracy.ci_low > 1 / 26
    hard = json.loads((runs / "mini_clip-zero_shot" / "mini_classify" / "metrics.json").read_text())
    assert hard["hard_classes"]["n"] == 10
    # A protocol card per stage-2 model, on the same frozen questions, shown in the report.
    for run in stage2:
        card_dir = runs / "cards" / run.name / "mini_classify"
        metrics = json.loads((card_dir / "metrics.json").read_text())
        assert metrics["question_set"]["fingerprint"] in fingerprints
        card = metrics["protocol"]
        assert [r["k"] for r in card["options"]] == ["2", "4", "10", "26", "all"]
        assert card["n_questions"] == 30 and card["order"]["rotations"] == 4
        assert card["difficulty"][2]["encoder"].startswith("clip:")  # the mini-CLIP ranks
    assert html.count('<table class="card">') == 4
    assert "mini_classify: accuracy by options per question" in html

    # Re-running reuses every finished step.
    main(args)
    # mini-LM, 2 x (stage 1, 2 x stage 2), baseline, 4 cards
    assert capsys.readouterr().out.count("done before") == 12


def _accuracy_figure(html: str) -> str:
    """The report's first chart (accuracy per dataset) with its legend."""
    start = html.index('<figure class="chart">')
    return html[start : html.index("</figure>", start)]
