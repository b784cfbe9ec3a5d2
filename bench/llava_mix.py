"""A LLaVA-665K-like training mix, generated offline: what bench/train_throughput.py trains on.

Short VQA turns, multi-turn conversations, long descriptions and text-only rows, in LLaVA's
JSON format (`id`, `image`, `conversations`), with photo-sized JPEGs (336-640 px).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the a of and to in is on with at by from this that it person man woman child dog cat car "
    "street building tree sky water table chair window door red blue green white black small "
    "large old new left right front behind near far holding wearing standing sitting walking "
    "looking two three several many some food plate cup bottle phone sign road grass field "
    "picture scene color shape light shadow background foreground side top bottom middle "
    "because while which where what why how there here very quite also likely probably"
).split()
SIZES = [(640, 480), (500, 375), (480, 640), (640, 427), (336, 336)]
# LLaVA-665K-like kinds: (weight, turns, question words, answer words, has image)
KINDS = {
    "vqa": (0.40, (1, 4), (5, 12), (1, 6), True),
    "conversation": (0.25, (2, 4), (6, 14), (15, 40), True),
    "detail": (0.20, (1, 1), (6, 10), (60, 150), True),
    "text_only": (0.15, (1, 2), (8, 20), (30, 120), False),
}


def _text(rng: random.Random, span: tuple[int, int]) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(*span))]
    return " ".join(words).capitalize() + "."


def make_rows(root: Path, n: int, seed: int = 0) -> Path:
    """`root/rows.json` (LLaVA format) + JPEGs, idempotent: `n` samples of the mix above."""
    import numpy as np
    from PIL import Image

    path = root / "rows.json"
    if path.exists() and len(json.loads(path.read_text())) == n:
        return path
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names, weights = zip(*((k, v[0]) for k, v in KINDS.items()), strict=True)
    rows = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        _, turns, q_words, a_words, image = KINDS[kind]
        convo = []
        for t in range(rng.randint(*turns)):
            q = _text(rng, q_words)
            if image and t == 0:
                q = f"<image>\n{q}" if rng.random() < 0.7 else f"{q}\n<image>"
            convo += [{"from": "human", "value": q}, {"from": "gpt", "value": _text(rng, a_words)}]
        row = {"id": f"{kind}-{i}", "conversations": convo}
        if image:
            w, h = rng.choice(SIZES)
            noise = np.random.default_rng(i).integers(0, 255, (h // 16, w // 16, 3), np.uint8)
            Image.fromarray(noise).resize((w, h)).save(root / f"images/{i}.jpg", quality=90)
            row["image"] = f"images/{i}.jpg"
        rows.append(row)
    path.write_text(json.dumps(rows))
    return path
