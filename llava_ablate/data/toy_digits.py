"""A tiny LLaVA-format dataset generated offline from scikit-learn's handwritten digits.

Real images, real labels, no download: the data behind the CPU smoke run and the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from llava_ablate.base.files import atomic_write

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# (width, height) of the images in turn for `toy_digits_anyres`: square, wide and tall images
# that anyres (arch=tiny_onevision, 32 px crops) tiles onto different grids.
ANYRES_SIZES = [(32, 32), (64, 32), (32, 64), (64, 64), (96, 40), (40, 96), (96, 96)]


def build_toy_digits(
    out_dir: Path, n_images: int = 256, size: int = 32, sizes: list[tuple[int, int]] | None = None
) -> Path:
    """Write `out_dir/{captions,instruct}.json` + images (idempotent).

    captions.json: one caption per image (stage 1, "plain" format); instruct.json: the same
    images with single- and multi-turn questions plus text-only samples (stage 2). Images are
    `size` px squares, or take the (width, height) of `sizes` in turn.
    """
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    if (out_dir / "instruct.json").exists():
        return out_dir
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows, captions = [], []
    for i in range(min(n_images, len(digits.images))):
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        name = f"images/{i:05d}.png"
        shape = sizes[i % len(sizes)] if sizes else (size, size)
        Image.fromarray(pixels).resize(shape, Image.NEAREST).convert("RGB").save(out_dir / name)
        label = NAMES[int(digits.target[i])]
        captions.append(
            {
                "id": f"caption-{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\n"},
                    {"from": "gpt", "value": f"A handwritten digit {label}."},
                ],
            }
        )
        if i % 2 == 0:
            convo = [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": f"A handwritten digit {label}."},
            ]
        else:
            convo = [
                {"from": "human", "value": "What digit is shown?\n<image>"},
                {"from": "gpt", "value": f"It is a {label}."},
                {"from": "human", "value": "Is it written by hand?"},
                {"from": "gpt", "value": "Yes, it is handwritten."},
            ]
        rows.append({"id": f"digit-{i}", "image": name, "conversations": convo})
    for k, (a, b) in enumerate(zip(NAMES, NAMES[1:], strict=False)):  # text-only samples mix in
        rows.append(
            {
                "id": f"text-{k}",
                "conversations": [
                    {"from": "human", "value": f"Which number comes after {a}?"},
                    {"from": "gpt", "value": f"After {a} comes {b}."},
                ],
            }
        )
    for fname, data in (("captions.json", captions), ("instruct.json", rows)):
        with atomic_write(out_dir / fname) as tmp:  # instruct.json last: it means "built"
            tmp.write_text(json.dumps(data))
    return out_dir


def build_toy_digits_anyres(out_dir: Path) -> Path:
    """The same samples with images of several sizes and aspect ratios (anyres tests)."""
    return build_toy_digits(out_dir, sizes=ANYRES_SIZES)
