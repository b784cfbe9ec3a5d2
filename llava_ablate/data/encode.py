"""Turn a stored sample into model inputs; bad samples become counted skips, never silent drops.

Two phases so that batching can group by length before the (costly) image decoding, and a
resumed run can fast-forward through samples without decoding them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from llava_ablate.data.anyres import anyres_token_counts, image_size
from llava_ablate.data.conversation import (
    EmptySupervision,
    ImageTagMismatch,
    MalformedConversation,
    SampleTooLong,
    SpecialTokenInText,
    TokenizationMismatch,
    tokenize_conversation,
)
from llava_ablate.data.images import decode_rgb, mean_colour, pad_to_square, tower_side
from llava_ablate.data.pixels import BatchPixels, SquarePixels, stacked


@dataclass
class Skip:
    """A sample that was not used, and why (aggregated into the run's skip counts)."""

    id: str
    reason: str
    detail: str = ""


@dataclass
class EncodeOptions:
    prompt_format: str
    num_image_tokens: int
    max_length: int
    overflow: str
    pad_to_square: bool
    # LLaVA-OneVision's anyres: an image's token count follows from its size (data/anyres.py)
    # and its pixels are a stack of views; num_image_tokens is then that of one view.
    anyres: bool = False
    # Decode large JPEGs at a reduced scale (PIL draft mode) down to twice what the tower reads;
    # False: always the full decode (the LLaVA loaders' way; the bench's baseline).
    draft_decode: bool = True
    # Pad-to-square views of CLIP/SigLIP towers: pixel values from the uint8 image by one lookup
    # table (data/pixels.py, bitwise equal to the processor); False: the processor's own path
    # (the bench's baseline).
    fused_pixels: bool = True


@dataclass
class Tokenized:
    id: str
    input_ids: list[int]
    labels: list[int]
    images: list[bytes]  # still encoded
    source: str = ""  # the shards' source (the shard's directory); "" when not from shards
    dropped_tokens: int = 0  # cut by recipe.overflow=truncate

    @property
    def length(self) -> int:
        return len(self.input_ids)


class SampleEncoder:
    def __init__(self, processor, options: EncodeOptions):
        if options.anyres and options.pad_to_square:
            raise ValueError(
                "anyres tiles each image at its own aspect ratio: padding it to a square first "
                "would change the size its token count is computed from"
            )
        self.processor = processor
        self.options = options
        # One sample's text at a time: the Rust tokenizer's thread pool has little to share out
        # (a few short prefixes), and its threads would compete for the cores the trainer and
        # the other loader workers need; off, the loader's CPU is the tokenising thread's own.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._fill = mean_colour(processor.image_processor)
        self._min_side = None  # None: every image decoded at full size
        if options.draft_decode:
            try:
                self._min_side = tower_side(processor.image_processor, options.pad_to_square)
            except ValueError:  # a processor of unknown geometry: the draft is only a speed-up
                pass
        self._square = None  # None: the processor computes the pixel values
        if options.fused_pixels and options.pad_to_square:
            self._square = SquarePixels.for_processor(processor.image_processor, self._fill)

    def tokenize(self, sample: dict) -> Tokenized | Skip:
        """`sample`: a webdataset sample (`json` metadata + `img<k>.<ext>` image bytes)."""
        meta = sample["json"]
        meta = json.loads(meta) if isinstance(meta, bytes | str) else meta
        sample_id = str(meta.get("id", sample.get("__key__")))
        opt = self.options
        images = [sample[k] for k in meta.get("images", [])]
        counts: int | list[int] = opt.num_image_tokens
        if opt.anyres:
            try:
                counts = anyres_token_counts(self.processor, [image_size(x) for x in images])
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                return Skip(sample_id, "corrupt_image", str(e))
        try:
            t = tokenize_conversation(
                sample_id,
                meta["conversations"],
                self.processor.tokenizer,
                prompt_format=opt.prompt_format,
                num_image_tokens=counts,
                max_length=opt.max_length,
                overflow=opt.overflow,
            )
        except (
            SampleTooLong,
            EmptySupervision,
            MalformedConversation,
            ImageTagMismatch,
            SpecialTokenInText,
            # Never trained on with a wrong mask; one odd sample is skipped and counted, a template
            # that mismatches systematically trips data.max_bad_fraction and stops the run.
            TokenizationMismatch,
        ) as e:
            return Skip(sample_id, e.reason, str(e))
        if t.num_images != len(images):
            return Skip(
                sample_id, "image_tag_mismatch", f"{t.num_images} tags, {len(images)} images"
            )
        source = Path(str(sample.get("__url__", ""))).parent.name
        return Tokenized(sample_id, t.input_ids, t.labels, images, source, t.dropped_tokens)

    def finish_all(self, toks: list[Tokenized | Skip]) -> list[dict | Skip]:
        """`finish` of a micro-batch's samples (Skips passed through); on the fused path their
        pixel values share one buffer, so collating them copies nothing."""
        buffer = None
        if self._square is not None:
            n = sum(len(t.images) for t in toks if not isinstance(t, Skip))
            buffer = BatchPixels(n, self._square.side) if n else None
        return [t if isinstance(t, Skip) else self.finish(t, buffer) for t in toks]

    def finish(self, tok: Tokenized, buffer: BatchPixels | None = None) -> dict | Skip:
        """Decode and preprocess the images (LLaVA pad-to-square when configured); on the fused
        path into `buffer`'s next slice when given."""
        out: dict = {
            "id": tok.id,
            "input_ids": long_tensor(tok.input_ids),
            "labels": long_tensor(tok.labels),
        }
        if tok.dropped_tokens:
            out["truncated"] = (tok.source, tok.dropped_tokens)
        if tok.images:
            decoded = []
            for data in tok.images:
                try:
                    decoded.append(decode_rgb(data, self._min_side))
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    return Skip(tok.id, "corrupt_image", str(e))
            if self._square is not None and buffer is not None:
                array, view = buffer.take(len(decoded))
                self._square(decoded, out=array)
                out["pixel_values"] = view
            elif self._square is not None:
                out["pixel_values"] = self._square(decoded)
            else:
                if self.options.pad_to_square:
                    decoded = [pad_to_square(image, self._fill) for image in decoded]
                out.update(self._pixels(decoded))
        return out

    def _pixels(self, images: list[Image.Image]) -> dict:
        """pixel_values (llava: [n, C, H, W]; anyres: [n, views, C, H, W] and image_sizes)."""
        process = self.processor.image_processor
        if not self.options.anyres:
            return {"pixel_values": process(images, return_tensors="pt")["pixel_values"]}
        # One nested list = one sample: several images are processed as multi-image (base views).
        enc = process([images], return_tensors="pt")
        return {"pixel_values": enc["pixel_values"], "image_sizes": enc["image_sizes"]}

    def image_placeholder(self, image_token_id: int) -> ImagePlaceholder:
        blank = Image.new("RGB", (64, 64), self._fill)
        tokens = self.options.num_image_tokens
        if self.options.anyres:
            tokens = anyres_token_counts(self.processor, [(64, 64)])[0]
        pixels = self._pixels([blank])
        return ImagePlaceholder(
            image_token_id, tokens, pixels["pixel_values"], pixels.get("image_sizes")
        )


@dataclass
class ImagePlaceholder:
    """A fully masked extra row with one blank image, added to text-only micro-batches.

    Under ZeRO-3 every rank must run the same modules in the same order (each forward gathers
    partitioned weights collectively); a text-only batch on one rank while another sees images
    would skip the vision tower and deadlock. The row's labels are all -100, so the loss (a
    mean over supervised tokens) is unchanged.
    """

    token_id: int
    num_tokens: int
    pixel_values: torch.Tensor
    image_sizes: torch.Tensor | None = None  # anyres


class Collator:
    """Right-pad a micro-batch's rows; skipped samples are dropped and reported by reason.

    A row holds one sample, or with `packed` several laid end to end (data/batching.py). Packed
    batches carry position_ids that restart at 0 for every sample (and for a row's padded tail)
    and no attention_mask: transformers then builds a block-diagonal causal mask from the
    position_ids (masking_utils.find_packed_sequence_indices, sdpa/eager) or runs varlen
    flash-attention, so a sample never attends to its neighbour. Each sample's first label is
    -100: unpacked, that token is never a target (nothing precedes it), packed it would be
    predicted from the previous sample's last token.
    """

    def __init__(
        self, pad_token_id: int, placeholder: ImagePlaceholder | None = None, packed: bool = False
    ):
        self.pad_token_id = pad_token_id
        self.placeholder = placeholder
        self.packed = packed

    def __call__(self, items: list[dict | Skip]) -> dict:
        """One sample per row."""
        return self.rows([[x] for x in items])

    def rows(self, rows: list[list[dict | Skip]]) -> dict:
        skips = [x for row in rows for x in row if isinstance(x, Skip)]
        good = [[x for x in row if not isinstance(x, Skip)] for row in rows]
        good = [row for row in good if row]
        batch: dict = {
            "skipped": dict(Counter(x.reason for x in skips)),
            "skip_details": skips,
            "ids": [x["id"] for row in good for x in row],
            # source -> [samples cut at max_length, tokens dropped] (recipe.overflow=truncate)
            "truncated": truncation_counts(x for row in good for x in row),
        }
        if not good:
            return batch
        batch["real_tokens"] = sum(len(x["input_ids"]) for row in good for x in row)
        if self.placeholder is not None and not any("pixel_values" in x for r in good for x in r):
            p = self.placeholder
            ids = torch.full((p.num_tokens,), p.token_id)
            row = {"id": None, "input_ids": ids, "labels": torch.full_like(ids, -100)}
            row["pixel_values"] = p.pixel_values
            if p.image_sizes is not None:
                row["image_sizes"] = p.image_sizes
            good = good + [[row]]
            batch["placeholder_rows"] = 1
        width = max(sum(len(x["input_ids"]) for x in row) for row in good)
        ids = torch.full((len(good), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(good), width), -100, dtype=torch.long)
        mask = torch.zeros((len(good), width), dtype=torch.long)
        positions = torch.zeros((len(good), width), dtype=torch.long)
        for i, row in enumerate(good):
            start = 0
            for x in row:
                end = start + len(x["input_ids"])
                ids[i, start:end] = x["input_ids"]
                labels[i, start:end] = x["labels"]
                if self.packed:
                    labels[i, start] = -100
                positions[i, start:end] = torch.arange(end - start)
                start = end
            mask[i, :start] = 1
            # A padded tail restarts at 0 too: its own segment, attended by no sample.
            positions[i, start:] = torch.arange(width - start)
        batch.update(input_ids=ids, labels=labels)
        if self.packed:
            batch["position_ids"] = positions
        else:
            batch["attention_mask"] = mask
        pixels = [x["pixel_values"] for row in good for x in row if "pixel_values" in x]
        if pixels:  # in row order: the model fills image tokens in the same order
            batch["pixel_values"] = _stack_images(pixels)
        sizes = [x["image_sizes"] for row in good for x in row if "image_sizes" in x]
        if sizes:  # anyres: each image's size, and how many images each *sample* carries
            batch["image_sizes"] = torch.cat(sizes)
            # Per sample, not per (packed) row: OneVision tiles an image only when its sample
            # has exactly one, which is how the tokens were expanded at encoding.
            batch["batch_num_images"] = torch.tensor(
                [len(x.get("image_sizes", ())) for row in good for x in row]
            )
        return batch


def long_tensor(values: list[int]) -> torch.Tensor:
    """An int64 tensor of a list: through numpy, ~8x less CPU than torch.tensor(list), which
    converts element by element (a sample holds ~1,000 ids with 576 image tokens)."""
    return torch.from_numpy(np.array(values, dtype=np.int64))


def truncation_counts(items) -> dict[str, list[int]]:
    """source -> [samples truncated, tokens dropped] over finished samples."""
    counts: dict[str, list[int]] = {}
    for x in items:
        if "truncated" in x:
            source, dropped = x["truncated"]
            entry = counts.setdefault(source, [0, 0])
            entry[0] += 1
            entry[1] += dropped
    return counts


def _stack_images(pixels: list[torch.Tensor]) -> torch.Tensor:
    """All images of a micro-batch in one tensor; anyres views ([n, views, C, H, W]) are padded
    with zeros to the most views (the model reads each image's own count from its size)."""
    if pixels[0].dim() == 4:
        joined = stacked(pixels)
        if joined is not None:
            return joined
        # numpy, not torch.cat: a copy this size runs on torch's intra-op threads, which cost
        # ~10x the CPU of one thread's copy when the cores are shared (in-process loading).
        return torch.from_numpy(np.concatenate([p.numpy() for p in pixels]))
    most = max(p.shape[1] for p in pixels)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1]))
                      for p in pixels])  # fmt: skip
