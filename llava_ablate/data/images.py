"""Image loading and LLaVA's pad-to-square."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# What class folders and image directories are read as images (compared lower-cased).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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
