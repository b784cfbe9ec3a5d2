"""The documentation a newcomer reads: README.md is a front page (small, the two set-up
commands first), every relative link of README.md, docs/*.md and bench/README.md resolves (file
and #anchor), and no user-facing text (pages, --help) cites the project's issue numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench/README.md"]
ISSUE = re.compile(r"\bissues? #?\d+", re.I)


def test_readme_is_a_front_page_with_the_two_set_up_commands_first():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 20_000, "README.md is a front page: move details to docs/"
    first = re.search(r"^```bash\n(.*?)^```", readme.read_text(), re.S | re.M).group(1)
    commands = [x.split("#")[0].strip() for x in first.splitlines() if x.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_user_facing_text_cites_no_issue_numbers():
    cited = [f"{p.relative_to(ROOT)}: {m}" for p in PAGES for m in ISSUE.findall(p.read_text())]
    for module in ("llava_ablate.demo", "llava_ablate.cli", "llava_ablate.launch"):
        help_text = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120).stdout  # fmt: skip
        assert "usage" in help_text.lower(), module
        cited += [f"{module} --help: {m}" for m in ISSUE.findall(help_text)]
    assert not cited, cited
