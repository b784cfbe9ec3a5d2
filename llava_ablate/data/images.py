"""Image loading and LLaVA's pad-to-square, and the fast image path: images stored no larger
than the tower reads them (`shrink_encoded`, at shard build) and JPEGs decoded at a reduced
scale when the target is much smaller than the source (`decode_rgb`, PIL's draft mode)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

# What class folders and image directories are read as images (compared lower-cased).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# PIL's own `thumbnail` default: reduce by whole factors (JPEG draft) only while the image stays
# at least this many times the target, then resample properly; "very close to fair resampling".
# Used when decoding for training; the build resamples from the full decode.
REDUCING_GAP = 2.0
# Re-encoded JPEGs: high quality and no chroma subsampling (the source was already compressed
# once; this second pass should add little). Other formats are re-encoded losslessly (PNG).
REENCODE_JPEG = {"quality": 95, "subsampling": 0}
# image_aspect=resize scales the *shorter* side to the tower's size (then crops): keeping the
# longer side at twice that size loses nothing for aspect ratios up to 2:1.
RESIZE_ASPECT_ROOM = 2


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()  # force decoding now so a truncated file fails here, not in the processor
        return im.convert("RGB")


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's `image_aspect_ratio=pad`: centre on a square of the processor's mean colour."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


# How an image reaches the model -- the one vocabulary of training, evaluation and every
# metrics.json (`image_aspect`): `pad` (LLaVA-1.5's pad-to-square, then the processor), `native`
# (the processor takes the image as it is: its own resize and crop, dynamic resolution or anyres
# tiles), `processor` (a CLIP/SigLIP zero-shot baseline's own resize and crop). The configs ask
# for one by other names: training's vision.image_aspect=resize is `native`, evaluation's
# model.image_aspect=auto is the family's choice (eval/run.py `image_aspect_of`).
ImageAspect = Literal["pad", "native", "processor"]


def image_aspect(requested: str, *, anyres: bool) -> ImageAspect:
    """`pad` when asked for and the processor does not tile (anyres keeps the image's aspect
    ratio onto a grid of crops, never pads); otherwise `native`."""
    return "pad" if requested == "pad" and not anyres else "native"


def is_anyres(image_processor) -> bool:
    """Whether the processor tiles at the image's aspect ratio (`image_grid_pinpoints`)."""
    return bool(getattr(image_processor, "image_grid_pinpoints", None))


def mean_colour(image_processor) -> tuple[int, int, int]:
    mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
    return tuple(int(round(255 * m)) for m in mean)  # type: ignore[return-value]


def tower_side(image_processor, pad: bool) -> int:
    """The longest image side the processor reads at full detail: beyond it, pixels are only
    averaged away. Anyres (OneVision): the largest side of its grid; pad-to-square: the
    tower's size (the padded square's side is the image's longer side); resize: twice it
    (`RESIZE_ASPECT_ROOM`)."""
    if is_anyres(image_processor):
        return max(max(pair) for pair in image_processor.image_grid_pinpoints)
    size = dict(getattr(image_processor, "size", None) or {})
    if "longest_edge" in size:
        return int(size["longest_edge"])
    side = int(size.get("shortest_edge") or max(size.get("height", 0), size.get("width", 0)))
    if side <= 0:
        raise ValueError(
            f"cannot tell the image side {type(image_processor).__name__} reads from its size "
            f"{size}; set data.max_image_side to a number of pixels (or null: keep originals)"
        )
    return side if pad else RESIZE_ASPECT_ROOM * side


def resolve_max_image_side(setting, tower: int | None) -> int | None:
    """data.max_image_side as pixels: "auto" -> the tower's side, null -> originals (None)."""
    if setting is None:
        return None
    if setting == "auto":
        if tower is None:
            raise ValueError("data.max_image_side=auto needs the vision tower's image processor")
        return tower
    if isinstance(setting, int) and not isinstance(setting, bool) and setting > 0:
        return setting
    raise ValueError(
        f"data.max_image_side={setting!r}; use auto (from the vision tower), a number of pixels "
        "or null (store the original images)"
    )


def decode_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to RGB. With `min_side`, a JPEG whose longer side is much larger is
    decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode, done inside libjpeg: far fewer pixels
    to decode and later resize), keeping its longer side >= REDUCING_GAP x min_side."""
    with Image.open(io.BytesIO(data)) as im:
        if min_side and im.format == "JPEG":
            w, h = im.size
            scale = REDUCING_GAP * min_side / max(w, h)
            if scale <= 0.5:  # floor: a side like 427/2 must still allow the 1/2 scale
                im.draft("RGB", (math.floor(w * scale), math.floor(h * scale)))
        im.load()  # decode now so a truncated file fails here, not in the processor
        # An RGB decode is returned as it is (convert() would copy it; the data outlives the
        # `with`, which only lets go of the bytes).
        return im if im.mode == "RGB" else im.convert("RGB")


def shrink_encoded(data: bytes, max_side: int) -> tuple[bytes, str, tuple[int, int]] | None:
    """The image re-encoded with its longer side at `max_side` (aspect kept), as (bytes, ext,
    size); None when it is no larger already (stored as it is). JPEG stays JPEG (q95, 4:4:4);
    anything else becomes PNG (lossless: text and line art keep their edges)."""
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return None
        is_jpeg = im.format == "JPEG"
        png_modes = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
        image = im.convert("RGB") if is_jpeg or im.mode not in png_modes else im.copy()
    small = _resize_like_pad(image, max_side)
    out = io.BytesIO()
    small.save(out, *(("JPEG",) if is_jpeg else ("PNG",)), **(REENCODE_JPEG if is_jpeg else {}))
    return out.getvalue(), "jpg" if is_jpeg else "png", small.size


def _resize_like_pad(image: Image.Image, side: int) -> Image.Image:
    """Bicubic resize to longer side `side`, sampling exactly the source area that LLaVA's
    pad-to-square then a resize to `side` maps onto each stored pixel (the shorter side is
    rounded to whole pixels and centred by whole pixels; a plain resize would shift the image
    by up to half a pixel against the full path). Edges are replicated for the sliver of
    margin that alignment reads outside the image."""
    w, h = image.size
    longer = max(w, h)

    def axis(n: int) -> tuple[int, float, float]:
        stored = max(1, round(n * side / longer))
        start = (side - stored) // 2 * longer / side - (longer - n) // 2
        return stored, start, start + stored * longer / side

    (sw, x0, x1), (sh, y0, y1) = axis(w), axis(h)
    m = math.ceil(longer / side) + 2  # covers the margin the box and the bicubic kernel read
    mode = image.mode if image.mode in ("RGB", "RGBA", "L", "LA") else "RGBA"
    array = np.asarray(image.convert(mode))
    pad = ((m, m), (m, m)) + (((0, 0),) if array.ndim == 3 else ())
    padded = Image.fromarray(np.pad(array, pad, mode="edge"))
    box = (x0 + m, y0 + m, x1 + m, y1 + m)
    return padded.resize((sw, sh), Image.Resampling.BICUBIC, box=box)
