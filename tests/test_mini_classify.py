"""The demo's offline 30-class dataset: real images from three installed sources, the data axis
split (common / rare / absent), and a test split disjoint from training."""

from __future__ import annotations

import csv

from PIL import Image

from llava_ablate.data.mini_classify import ABSENT, RARE, build_mini_classify


def test_mini_classify_layout_and_data_axis(tmp_path):
    root = build_mini_classify(
        tmp_path / "mini", train_per_class=6, test_per_class=4, rare_per_class=2
    )
    rows = list(csv.reader((root / "classes.csv").open()))
    keys = {k: (name, group) for k, name, group in rows}
    assert len(keys) == 30 and len({n for n, _ in keys.values()}) == 30
    assert {g for _, g in keys.values()} == {"digit", "clothing", "letter"}
    by_name = {name: k for k, (name, _) in keys.items()}
    test = {p.name: len(list(p.glob("*.png"))) for p in (root / "test").iterdir()}
    assert test == {k: 4 for k in keys}
    common = {p.name for p in (root / "train_common").iterdir()}
    rare = {p.name: len(list(p.glob("*.png"))) for p in (root / "train_rare").iterdir()}
    extra = {p.name for p in (root / "train_extra").iterdir()}
    assert rare == {by_name[n]: 2 for n in RARE}
    assert not common & (set(rare) | {by_name[n] for n in ABSENT})  # absent: never in base
    assert extra == {by_name[n] for n in RARE + ABSENT} and len(common) == 20
    image = Image.open(next((root / "test" / by_name["letter O"]).glob("*.png")))
    assert image.size == (32, 32) and image.mode == "RGB"
    # Train and test images never coincide (digits are split by index, others drawn apart).
    for key in ("digit_seven", "t-shirt"):
        folder = "train_common" if key in common else "train_extra"
        train_bytes = {p.read_bytes() for p in (root / folder / key).glob("*.png")}
        assert not train_bytes & {p.read_bytes() for p in (root / "test" / key).glob("*.png")}
    assert build_mini_classify(root) == root  # idempotent
