"""mini-classify: a 30-class real-image classification set built offline from installed assets.

- 10 handwritten digits (scikit-learn's `load_digits`, 8x8 scans),
- 10 Fashion-MNIST garments (Debian `dataset-fashion-mnist`, 28x28 photos),
- 10 letters rendered from the installed fonts (DejaVu variants + Pillow's own), jittered.

Naturally confusable pairs are kept on purpose: digit zero / letter O, digit one / letter I,
digit five / letter S, digit eight / letter B, digit two / letter Z, shirt / t-shirt / pullover /
coat, sneaker / sandal / ankle boot.

The training images are split three ways for the data axis of the demo grid: `common` classes
(many images), `rare` classes (a handful) and `absent` classes (none) in the base mixture; the
`extra` folder holds the rare and absent classes in full, for the `+extra` mixture.
"""

from __future__ import annotations

import csv
import gzip
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from llava_ablate.base.files import atomic_write

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
SIZE = 32

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
LETTERS = ["O", "I", "S", "B", "Z", "A", "E", "H", "X", "K"]

# The data axis: which classes the base mixture shows rarely or never.
RARE = ["shirt", "letter O", "letter S", "digit seven", "sandal"]
ABSENT = ["pullover", "letter B", "letter Z", "letter I", "ankle boot"]


@dataclass
class ClassInfo:
    key: str  # folder name
    name: str  # readable name
    group: str  # digit | clothing | letter


def classes() -> list[ClassInfo]:
    out = [ClassInfo(f"digit_{d}", f"digit {d}", "digit") for d in DIGITS]
    out += [ClassInfo(f.replace(" ", "_"), f, "clothing") for f in FASHION]
    out += [ClassInfo(f"letter_{c}", f"letter {c}", "letter") for c in LETTERS]
    return out


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images, labels = (
        FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz",
        FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz",
    )
    if not images.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {images}: install it with "
            "`apt-get install dataset-fashion-mnist` (what `make install` does), or set "
            "FASHION_MNIST_DIR to a directory with the four *-ubyte.gz files"
        )
    return _read_idx(images), _read_idx(labels)


def _fonts() -> list[ImageFont.FreeTypeFont]:
    paths = sorted(Path("/usr/share/fonts").rglob("*.ttf"))[:12]
    fonts = [ImageFont.truetype(str(p), 22) for p in paths]
    fonts.append(ImageFont.load_default(size=22))  # ships inside Pillow: works anywhere
    return fonts


def _glyph(char: str, rng: random.Random, fonts) -> Image.Image:
    canvas = Image.new("L", (48, 48), 0)
    draw = ImageDraw.Draw(canvas)
    font = rng.choice(fonts)
    draw.text(
        (24 + rng.randint(-4, 4), 24 + rng.randint(-4, 4)),
        char,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=rng.choice([0, 0, 1]),
        stroke_fill=255,
    )
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noise = np.asarray(canvas, np.float32) + np.random.default_rng(rng.randrange(2**31)).normal(
        0, 12, (48, 48)
    )
    return Image.fromarray(noise.clip(0, 255).astype(np.uint8))


def _to_rgb(gray: np.ndarray | Image.Image) -> Image.Image:
    image = gray if isinstance(gray, Image.Image) else Image.fromarray(gray)
    return image.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")


def _images(split: str, per_class: int, seed: int) -> dict[str, list[Image.Image]]:
    """Per class key, `per_class` images of `split` (train/test never share a source image)."""
    from sklearn.datasets import load_digits

    rng = random.Random(f"{seed}:{split}")
    out: dict[str, list[Image.Image]] = {}
    digits = load_digits()
    for d, word in enumerate(DIGITS):
        idx = [i for i, t in enumerate(digits.target) if t == d]
        idx = idx[: len(idx) // 2] if split == "train" else idx[len(idx) // 2 :]
        pick = rng.sample(idx, min(per_class, len(idx)))
        out[f"digit_{word}"] = [
            _to_rgb((digits.images[i] / 16 * 255).astype(np.uint8)) for i in pick
        ]
    images, labels = _fashion(split)
    for f, name in enumerate(FASHION):
        idx = np.flatnonzero(labels == f).tolist()
        out[name.replace(" ", "_")] = [_to_rgb(images[i]) for i in rng.sample(idx, per_class)]
    fonts = _fonts()
    for c in LETTERS:
        out[f"letter_{c}"] = [_to_rgb(_glyph(c, rng, fonts)) for _ in range(per_class)]
    return out


def _write(folder: Path, images: dict[str, list[Image.Image]], keys: list[str], limit: int | None):
    for key in keys:
        (folder / key).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images[key][:limit]):
            image.save(folder / key / f"{i:04d}.png")


def build_mini_classify(
    out: Path,
    train_per_class: int = 60,
    test_per_class: int = 20,
    rare_per_class: int = 3,
    seed: int = 0,
) -> Path:
    """Write out/{train_common,train_rare,train_extra,test}/<class>/*.png + classes.csv (idempotent)."""
    out = Path(out)
    if (out / "classes.csv").exists():
        return out
    info = classes()
    by_name = {c.name: c.key for c in info}
    rare, absent = [by_name[n] for n in RARE], [by_name[n] for n in ABSENT]
    common = [c.key for c in info if c.key not in rare + absent]
    train = _images("train", train_per_class, seed)
    with atomic_write(out) as tmp:  # all or nothing: a half-built dataset is never used
        _write(tmp / "train_common", train, common, None)
        _write(tmp / "train_rare", train, rare, rare_per_class)
        _write(tmp / "train_extra", train, rare + absent, None)
        _write(tmp / "test", _images("test", test_per_class, seed), [c.key for c in info], None)
        with (tmp / "classes.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows((c.key, c.name, c.group) for c in info)
        (tmp / "names.txt").write_text("".join(f"{c.name}\n" for c in info))
    return out
