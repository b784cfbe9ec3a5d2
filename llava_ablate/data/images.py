"""Image loading and LLaVA's pad-to-square, and the fast image path: images stored no larger
than the tower reads them (`shrink_encoded`, at shard build) and JPEGs decoded at a reduced
scale when the target is much smaller than the source (`decode_rgb`, PIL's draft mode)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image

# What class folders and image directories are read as images (compared lower-cased).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# PIL's own `thumbnail` default: reduce by whole factors (JPEG draft) only while the image stays
# at least this many times the target, then resample properly; "very close to fair resampling".
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


def mean_colour(image_processor) -> tuple[int, int, int]:
    mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
    return tuple(int(round(255 * m)) for m in mean)  # type: ignore[return-value]


def tower_side(image_processor, pad: bool) -> int:
    """The longest image side the processor reads at full detail: beyond it, pixels are only
    averaged away. Anyres (OneVision): the largest side of its grid; pad-to-square: the
    tower's size (the padded square's side is the image's longer side); resize: twice it
    (`RESIZE_ASPECT_ROOM`)."""
    grid = getattr(image_processor, "image_grid_pinpoints", None)
    if grid:
        return max(max(pair) for pair in grid)
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
            if scale <= 0.5:
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()  # decode now so a truncated file fails here, not in the processor
        return im.convert("RGB")


def shrink_encoded(data: bytes, max_side: int) -> tuple[bytes, str, tuple[int, int]] | None:
    """The image re-encoded with its longer side at `max_side` (aspect kept), as (bytes, ext,
    size); None when it is no larger already (stored as it is). JPEG stays JPEG (q95, 4:4:4);
    anything else becomes PNG (lossless: text and line art keep their edges)."""
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return None
        is_jpeg = im.format == "JPEG"
        # PIL's thumbnail: aspect kept, JPEG draft up to REDUCING_GAP, then bicubic (as CLIP's
        # and SigLIP's processors resample).
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        out = io.BytesIO()
        if is_jpeg:
            im.convert("RGB").save(out, "JPEG", **REENCODE_JPEG)
        else:
            png_modes = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
            (im if im.mode in png_modes else im.convert("RGB")).save(out, "PNG")
        return out.getvalue(), "jpg" if is_jpeg else "png", im.size
