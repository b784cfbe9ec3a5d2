"""The HTML report as a reader sees it: rendered by a real headless Chromium (Debian's
`chromium`), with a probe script that measures the laid-out page. Every series label must be
fully visible (inside the viewport, not clipped), no chart text may fall outside its SVG, and no
section may be empty without a sentence saying why. CI sets LLAVA_REQUIRE_BROWSER=1 (.ci/run),
so a missing browser fails there instead of skipping."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import _args, _write_dataset, _write_run

from llava_ablate.report.command import build
from llava_ablate.report.html import render_html

# Measures the page after layout; its findings land in the DOM that --dump-dom prints.
PROBE = """<script>
const out = {labels: [], outside: [], sections: []};
const vw = document.documentElement.clientWidth;
for (const el of document.querySelectorAll('.series-label')) {
  const r = el.getBoundingClientRect();
  out.labels.push({text: el.textContent, figure: el.closest('figure').querySelector('title')
    .textContent, visible: r.width > 0 && r.left >= 0 && r.right <= vw + 0.5
    && el.scrollWidth <= el.clientWidth + 1});
}
for (const svg of document.querySelectorAll('svg')) {
  const box = svg.getBoundingClientRect();
  for (const t of svg.querySelectorAll('text')) {
    const r = t.getBoundingClientRect();
    if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5
        || r.bottom > box.bottom + 0.5) out.outside.push(t.textContent);
  }
}
for (const s of document.querySelectorAll('section')) {
  out.sections.push({title: s.querySelector('h2').textContent,
    filled: s.querySelectorAll('tr').length > 1 || s.querySelectorAll('svg, h3').length > 0,
    why: Array.from(s.querySelectorAll('.why')).map(p => p.textContent)});
}
out.pageWidth = [document.documentElement.scrollWidth, vw];
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (`make test` installs it: its `browser` target); CI sets LLAVA_REQUIRE_BROWSER=1."""
    path = shutil.which("chromium")
    if path is None:
        msg = "no chromium on PATH (apt-get install chromium; `make test` does (target `browser`))"
        if os.environ.get("LLAVA_REQUIRE_BROWSER"):  # set by `make test` and CI
            pytest.fail(msg)
        # Only a bare `pytest` on a machine where `make test` never ran (no Debian chromium)
        # gets here: the browser is a system package, not a Python dependency.
        pytest.skip(msg)
    return path


def render(chromium: str, page: Path, tmp_path: Path) -> tuple[str, dict]:
    """The DOM after Chromium laid the page out, and the probe's measurements."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=900,3000",
         "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not render or run its probe: {proc.stdout[:500]}"
    return proc.stdout, json.loads(html_lib.unescape(found.group(1)))


def _grid(root: Path) -> Path:
    """A 2x2 of LLM x data, one run with a longer label (an lr beyond the axes)."""
    rng = np.random.default_rng(5)
    p = {"digits": 0.55, "shapes": 0.65}
    for llm in ("tiny_llama", "small_qwen2"):
        for data in ("demo_base", "demo_extra"):
            _write_run(root, llm, rng, p, data=data, name=f"{llm}-{data}")
    _write_run(root, "small_qwen2", rng, p, data="demo_extra", name="lr", lr=1e-4)
    return root


def test_report_renders_with_every_series_label_visible(chromium, tmp_path):
    grid = _grid(tmp_path / "grid")
    rng = np.random.default_rng(6)  # a second seed of one variant, and a CLIP zero-shot row
    _write_run(grid, "tiny_llama", rng, {"digits": 0.5, "shapes": 0.6}, data="demo_base",
               name="tiny_llama-demo_base-s2", seed=7)  # fmt: skip
    clip = tmp_path / "clip"
    for ds in ("digits", "shapes"):
        _write_dataset(clip / ds, ds, rng.random(400) < 0.5, {"owl"}, f"fp-{ds}")
    (clip / "run.json").write_text(json.dumps({"model_type": "clip", "model_path": "x"}))
    runs, base, items = build(_args([str(grid), str(clip)], baseline=None))
    labels = [r.label for r in runs]
    rows = list(dict.fromkeys(r.variant for r in runs))  # a row per variant, seeds aggregated
    assert rows[0] == "clip zero-shot" and base.label == rows[0] and len(rows) == len(runs) - 1
    assert any(len(label) > 40 for label in rows)  # longer than the old legend cut (~25)
    page = tmp_path / "report.html"
    page.write_text(render_html(runs, base, items, title="2x2", n_boot=200, seed=0,
                                exposure={"cat": 0, "dog": 3, "owl": 3, "fox": 60}))  # fmt: skip
    dom, probe = render(chromium, page, tmp_path)
    assert "<h1>2x2</h1>" in dom
    figures = {x["figure"] for x in probe["labels"]}
    assert len(figures) == 4  # accuracy bars, loss, exposure per dataset (digits, shapes)
    for fig in figures:
        shown = [x for x in probe["labels"] if x["figure"] == fig]
        # Every series, its whole label: a row per variant, a loss curve per trained run.
        expected = [x for x in labels if "zero-shot" not in x] if fig == "Training loss" else rows
        assert [x["text"] for x in shown] == expected, fig
        assert all(x["visible"] for x in shown), [x for x in shown if not x["visible"]]
    assert probe["outside"] == []  # no tick, title or axis label outside its chart
    assert probe["pageWidth"][0] <= probe["pageWidth"][1]  # no table wider than the window
    for s in probe["sections"]:
        assert s["filled"] or s["why"], s
    titles = [s["title"] for s in probe["sections"]]
    assert f"Hard-class deltas against {base.label}" in titles


def test_report_without_evaluations_says_so(chromium, tmp_path):
    for name in ("a", "b"):
        run, _ = _write_run(tmp_path / "grid", "tiny_llama", np.random.default_rng(0), {},
                            name=name, lr=1e-4 if name == "b" else 2e-5)  # fmt: skip
        shutil.rmtree(run / "eval")
    runs, base, items = build(_args([str(tmp_path / "grid")], baseline=None))
    page = tmp_path / "report.html"
    page.write_text(render_html(runs, base, items, title="no eval", n_boot=200, seed=0))
    dom, probe = render(chromium, page, tmp_path)
    assert "No evaluation results: none of the 2 runs holds any" in dom
    for s in probe["sections"]:
        assert s["filled"] or s["why"], s
    accuracy = next(s for s in probe["sections"] if s["title"] == "Accuracy per dataset")
    assert not accuracy["filled"] and accuracy["why"]
    assert [x["text"] for x in probe["labels"]] == [r.label for r in runs]  # the loss chart
    assert all(x["visible"] for x in probe["labels"])
