"""Every supported family's processor loads for images where torchvision does not import: in our
process (one call, `allow_video_processors()`, which the evaluator and the builder make) and in
a process that never imports llava_ablate (the copy of the helper an export carries, run as its
model card says)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import family_models as fm
import pytest
import torch
from PIL import Image

from llava_ablate.base import video_processors
from llava_ablate.base.chat_templates import processor_messages, render
from llava_ablate.model.card import _without_torchvision

from conftest import ROOT


def card_code(directory) -> str:
    """The Python a video-capable export's model card tells users to run, for `directory`."""
    lines = _without_torchvision({"arch": {"type": "llava_onevision"}})
    code = lines[lines.index("```python") + 1 : lines.index("```", lines.index("```python"))]
    return "\n".join(code).replace("<this directory>", str(directory))


@pytest.fixture(scope="module")
def saved(cache_dir, tmp_path_factory):
    """Each family's processor saved, with what it encodes for one image and prompt."""
    root = tmp_path_factory.mktemp("processors")
    dirs = []
    for name, build in fm.BUILDERS.items():
        _, processor = build(cache_dir)
        d = root / name
        processor.save_pretrained(d)
        shutil.copyfile(video_processors.__file__, d / video_processors.WITHOUT_TORCHVISION)
        image = Image.new("RGB", (112, 56), (200, 30, 30))
        prompt = render(processor, processor_messages("What is it?"), True)
        enc = dict(processor(images=[image], text=[prompt], return_tensors="pt"))
        torch.save(enc, d / "expected.pt")
        image.save(d / "image.png")
        (d / "prompt.txt").write_text(prompt)
        (d / "card_code.py").write_text(card_code(d))
        dirs.append(str(d))
    return dirs


@pytest.mark.parametrize("mode", ["ours", "bare"])
def test_every_family_processor_loads_without_torchvision(saved, mode):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "processor_load_worker.py"), mode, *saved],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("loaded ") == len(fm.BUILDERS), proc.stdout
