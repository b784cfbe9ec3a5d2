"""The image processor's pixel values for a LLaVA-1.5 view, computed from the uint8 image with one
lookup table: pad-to-square, resize, rescale and normalise fused into a few array passes.

CLIP's and SigLIP's PIL image processors turn a padded square into float64, then float32, then
normalise it, each step a full-image copy; for a JPEG stored at the tower's size that was most
of a sample's image cost. Every output value depends on one uint8 input value and its channel
only, so the whole chain is a 3 x 256 table built with the processor's own float operations
(the results are bitwise equal, and a probe checks that at construction). When the padded
square is already the tower's size (shards built with `data.max_image_side=auto`) no resize and
no padded canvas are made: the pad colour's value fills the margins directly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

from llava_ablate.data.images import pad_to_square

log = logging.getLogger(__name__)

# Processors whose whole chain (convert to RGB, resize, centre crop, rescale, normalise) the table
# reproduces; exact classes, not subclasses (those may override any step).
_FUSABLE = (CLIPImageProcessorPil, SiglipImageProcessorPil)


class SquarePixels:
    """pixel_values of RGB images padded to squares of `fill` (pad-to-square runs), equal to
    `image_processor([pad_to_square(image, fill) for image in images])`."""

    def __init__(self, side: int, resample: int, table: np.ndarray, fill: tuple[int, int, int]):
        self.side = side
        self.resample = resample
        self.table = table  # [3, 256] float32: channel c's output for input value v
        self.fill = fill
        self._fill_values = table[np.arange(3), list(fill)]

    @classmethod
    def for_processor(cls, image_processor, fill: tuple[int, int, int]) -> SquarePixels | None:
        """The fused path for this processor, or None when its settings are not ones the table
        reproduces (the caller then runs the processor) or the probe disagrees with it."""
        if type(image_processor) not in _FUSABLE:
            return None
        side = _square_side(image_processor)
        if side is None:
            return None
        fused = cls(side, int(image_processor.resample), _value_table(image_processor), fill)
        if not fused.matches(image_processor):
            log.warning(
                "%s: the fused pixel path disagrees with the processor on a probe image; "
                "using the processor's own path",
                type(image_processor).__name__,
            )
            return None
        return fused

    def __call__(self, images: list[Image.Image], out: np.ndarray | None = None) -> torch.Tensor:
        """pixel_values [n, 3, S, S] of n RGB images, written into `out` when given (a slice of a
        micro-batch's buffer: see `BatchPixels`)."""
        if out is None:
            out = np.empty((len(images), 3, self.side, self.side), np.float32)
        for k, image in enumerate(images):
            w, h = image.size
            if max(w, h) == self.side:  # no resize: the margins take the pad colour's values
                at = ((self.side - w) // 2, (self.side - h) // 2)
                self._lookup(np.asarray(image), at, out[k])
            else:  # the processor's PIL resize of the padded square
                square = pad_to_square(image, self.fill).resize((self.side,) * 2, self.resample)
                self._lookup(np.asarray(square), (0, 0), out[k])
        return torch.from_numpy(out)

    def _lookup(self, rgb: np.ndarray, at: tuple[int, int], out: np.ndarray) -> None:
        """Write the table's values of `rgb` ([h, w, 3] uint8) into `out` ([3, S, S]) at
        (x, y) = `at`, and the pad colour's values around it (pad_to_square's centring)."""
        h, w = rgb.shape[:2]
        x, y = at
        fill = self._fill_values[:, None, None]
        out[:, :y], out[:, y + h :] = fill, fill  # empty slices when there is no margin
        out[:, :, :x], out[:, :, x + w :] = fill, fill
        planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # [3, h, w] uint8
        for c in range(3):  # mode="clip": no bounds check (uint8 is always in the table)
            np.take(self.table[c], planes[c], out=out[c, y : y + h, x : x + w], mode="clip")

    def matches(self, image_processor) -> bool:
        """Bitwise equal to the processor on probe images: one at the tower's size (the fused
        padding) and one larger (the resize)."""
        rng = np.random.default_rng(0)
        for w, h in ((self.side, max(1, self.side * 3 // 4)), (self.side * 2, self.side + 3)):
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            ref = image_processor([pad_to_square(image, self.fill)], return_tensors="pt")
            if not torch.equal(ref["pixel_values"], self([image])):
                return False
        return True


class BatchPixels:
    """One float32 buffer for all the images of a micro-batch, handed out in order as slices.

    Each sample's pixel_values is a view into it, so the collator's stack of views that follow
    one another in the buffer is the buffer itself (`stacked`), not a copy: that copy (1.35 MB
    per 336 px image) was a tenth of a sample's loading CPU.
    """

    def __init__(self, n_images: int, side: int):
        self.array = np.empty((n_images, 3, side, side), np.float32)
        self.tensor = torch.from_numpy(self.array)
        self._next = 0

    def take(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        """The next n images' slice, as (array to fill, tensor view of it)."""
        k, self._next = self._next, self._next + n
        return self.array[k : k + n], self.tensor[k : k + n]


def stacked(pixels: list[torch.Tensor]) -> torch.Tensor | None:
    """The views `pixels` joined without a copy, when they are consecutive slices of one buffer
    (`BatchPixels`, no sample skipped between them); else None."""
    base = pixels[0]._base
    if base is None or base.dim() != 4:
        return None
    per_image = base[0].numel()
    start = pixels[0].storage_offset()
    if start % per_image:
        return None
    at = start
    for p in pixels:
        if p._base is not base or p.storage_offset() != at or not p.is_contiguous():
            return None
        at += p.numel()
    return base[start // per_image : at // per_image]


def _square_side(image_processor) -> int | None:
    """The side S the processor turns any square image into (resize, then a centre crop that is
    a no-op), or None when it does something else (no resize, a non-square output, padding)."""
    p = image_processor
    if not p.do_resize or getattr(p, "do_pad", None) or not getattr(p, "do_convert_rgb", True):
        return None
    size = p.size
    if size.height and size.width and not (size.shortest_edge or size.longest_edge):
        out = (size.height, size.width)
    elif size.shortest_edge and not (size.longest_edge or size.height or size.width):
        out = (size.shortest_edge, size.shortest_edge)  # a square's shorter side is its side
    else:
        return None
    if out[0] != out[1]:
        return None
    if getattr(p, "do_center_crop", None) and (p.crop_size.height, p.crop_size.width) != out:
        return None
    return out[0]


def _value_table(image_processor) -> np.ndarray:
    """[3, 256] float32 by the processor's own steps (transformers.image_transforms: rescale in
    float64 then cast to float32; normalise (x - mean) / std in float32)."""
    p = image_processor
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
    if p.do_rescale:
        values = (values.astype(np.float64) * p.rescale_factor).astype(np.float32)
    else:
        values = values.astype(np.float32)
    if p.do_normalize:
        mean = np.array(_per_channel(p.image_mean), dtype=np.float32)[:, None]
        std = np.array(_per_channel(p.image_std), dtype=np.float32)[:, None]
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def _per_channel(value) -> list[float]:
    return list(value) if isinstance(value, list | tuple) else [value] * 3
