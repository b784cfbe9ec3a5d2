"""mini-classify: a 30-class real-image classification set built offline from installed assets.

- 10 handwritten digits (scikit-learn's `load_digits`, 8x8 scans),
- 10 Fashion-MNIST garments (28x28 photos): Debian's `dataset-fashion-mnist`, the directory
  FASHION_MNIST_DIR names, or else the official files fetched once (MD5-checked),
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
import hashlib
import logging
import os
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from llava_ablate.base.files import atomic_write

log = logging.getLogger(__name__)

DEBIAN_FASHION_DIR = Path(
    "/usr/share/datasets/fashion-mnist"
)  # apt-get install dataset-fashion-mnist
# The official files and the MD5 checksums Zalando publishes for them (their README).
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion"
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
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
    root = fashion_dir()
    return (
        _read_idx(root / f"{prefix}-images-idx3-ubyte.gz"),
        _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz"),
    )


def _has_fashion(root: Path) -> bool:
    return all((root / name).is_file() for name in FASHION_MD5)


def fashion_dir() -> Path:
    """Where the four Fashion-MNIST files are: FASHION_MNIST_DIR if set, else Debian's package,
    else the user cache; when neither holds them, the official files are fetched into
    FASHION_MNIST_DIR (or the cache) and checked against the published MD5s. Offline, the error
    names every way to provide them."""
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        target = Path(env)
        candidates = [target]
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        target = cache / "llava_ablate" / "fashion-mnist"
        candidates = [DEBIAN_FASHION_DIR, target]
    for root in candidates:
        if _has_fashion(root):
            return root
    url = os.environ.get("FASHION_MNIST_URL", FASHION_URL)
    where = " or ".join(str(c) for c in candidates)
    log.warning("Fashion-MNIST not found in %s: fetching the official files from %s into %s "
                "(MD5-checked)", where, url, target)  # fmt: skip
    try:
        _fetch_fashion(url, target)
    except OSError as e:  # URLError and timeouts are OSErrors
        raise FileNotFoundError(
            f"Fashion-MNIST (part of the demo's mini-classify) is not in {where}, and fetching "
            f"it from {url} failed ({e}). Either install Debian's package (`sudo apt-get install "
            f"dataset-fashion-mnist`, into {DEBIAN_FASHION_DIR}), or download the four files "
            f"{', '.join(FASHION_MD5)} (e.g. from {FASHION_URL}) on a machine with a network "
            "and set FASHION_MNIST_DIR to the directory holding them"
        ) from e
    return target


def _fetch_fashion(url: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MD5.items():
        if (target / name).is_file():
            continue
        with urllib.request.urlopen(f"{url}/{name}", timeout=60) as response:
            data = response.read()
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != md5:
            raise OSError(f"{url}/{name}: MD5 {got}, the published checksum is {md5}")
        tmp = target / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(target / name)  # a file under its name is always complete
        log.info("Fashion-MNIST: %s fetched (%d bytes, MD5 ok)", name, len(data))


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
