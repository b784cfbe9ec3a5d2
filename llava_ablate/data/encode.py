"""Turn a stored sample into model inputs; bad samples become counted skips, never silent drops.

Two phases so that batching can group by length before the (costly) image decoding, and a
resumed run can fast-forward through samples without decoding them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from llava_ablate.data.conversation import (
    EmptySupervision,
    MalformedConversation,
    SampleTooLong,
    SpecialTokenInText,
    TokenizationMismatch,
    tokenize_conversation,
)
from llava_ablate.data.images import decode_rgb, mean_colour, pad_to_square, tower_side


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
    # Decode large JPEGs at a reduced scale (PIL draft mode) down to twice what the tower reads;
    # False: always the full decode (the LLaVA loaders' way; the bench's baseline).
    draft_decode: bool = True


@dataclass
class Tokenized:
    id: str
    input_ids: list[int]
    labels: list[int]
    images: list[bytes]  # still encoded

    @property
    def length(self) -> int:
        return len(self.input_ids)


class SampleEncoder:
    def __init__(self, processor, options: EncodeOptions):
        self.processor = processor
        self.options = options
        self._fill = mean_colour(processor.image_processor)
        self._min_side = None  # None: every image decoded at full size
        if options.draft_decode:
            try:
                self._min_side = tower_side(processor.image_processor, options.pad_to_square)
            except ValueError:  # a processor of unknown geometry: the draft is only a speed-up
                pass

    def tokenize(self, sample: dict) -> Tokenized | Skip:
        """`sample`: a webdataset sample (`json` metadata + `img<k>.<ext>` image bytes)."""
        meta = sample["json"]
        meta = json.loads(meta) if isinstance(meta, bytes | str) else meta
        sample_id = str(meta.get("id", sample.get("__key__")))
        opt = self.options
        try:
            t = tokenize_conversation(
                sample_id,
                meta["conversations"],
                self.processor.tokenizer,
                prompt_format=opt.prompt_format,
                num_image_tokens=opt.num_image_tokens,
                max_length=opt.max_length,
                overflow=opt.overflow,
            )
        except (
            SampleTooLong,
            EmptySupervision,
            MalformedConversation,
            SpecialTokenInText,
            # Never trained on with a wrong mask; one odd sample is skipped and counted, a template
            # that mismatches systematically trips data.max_bad_fraction and stops the run.
            TokenizationMismatch,
        ) as e:
            return Skip(sample_id, e.reason, str(e))
        images = [sample[k] for k in meta.get("images", [])]
        if t.num_images != len(images):
            return Skip(
                sample_id, "image_tag_mismatch", f"{t.num_images} tags, {len(images)} images"
            )
        return Tokenized(sample_id, t.input_ids, t.labels, images)

    def finish(self, tok: Tokenized) -> dict | Skip:
        """Decode and preprocess the images (LLaVA pad-to-square when configured)."""
        out: dict = {
            "id": tok.id,
            "input_ids": torch.tensor(tok.input_ids),
            "labels": torch.tensor(tok.labels),
        }
        if tok.images:
            decoded = []
            for data in tok.images:
                try:
                    image = decode_rgb(data, self._min_side)
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    return Skip(tok.id, "corrupt_image", str(e))
                decoded.append(
                    pad_to_square(image, self._fill) if self.options.pad_to_square else image
                )
            pixels = self.processor.image_processor(decoded, return_tensors="pt")["pixel_values"]
            out["pixel_values"] = pixels
        return out

    def image_placeholder(self, image_token_id: int) -> ImagePlaceholder:
        blank = Image.new("RGB", (64, 64), self._fill)
        pixels = self.processor.image_processor([blank], return_tensors="pt")["pixel_values"]
        return ImagePlaceholder(image_token_id, self.options.num_image_tokens, pixels)


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


class Collator:
    """Right-pad a micro-batch; skipped samples are dropped from it and reported by reason."""

    def __init__(self, pad_token_id: int, placeholder: ImagePlaceholder | None = None):
        self.pad_token_id = pad_token_id
        self.placeholder = placeholder

    def __call__(self, items: list[dict | Skip]) -> dict:
        good = [x for x in items if not isinstance(x, Skip)]
        skips = [x for x in items if isinstance(x, Skip)]
        batch: dict = {
            "skipped": dict(Counter(x.reason for x in skips)),
            "skip_details": skips,
            "ids": [x["id"] for x in good],
        }
        if not good:
            return batch
        if self.placeholder is not None and not any("pixel_values" in x for x in good):
            p = self.placeholder
            ids = torch.full((p.num_tokens,), p.token_id)
            good = good + [
                {
                    "id": None,
                    "input_ids": ids,
                    "labels": torch.full_like(ids, -100),
                    "pixel_values": p.pixel_values,
                }
            ]
            batch["placeholder_rows"] = 1
        width = max(len(x["input_ids"]) for x in good)
        ids = torch.full((len(good), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(good), width), -100, dtype=torch.long)
        mask = torch.zeros((len(good), width), dtype=torch.long)
        for i, x in enumerate(good):
            n = len(x["input_ids"])
            ids[i, :n] = x["input_ids"]
            labels[i, :n] = x["labels"]
            mask[i, :n] = 1
        batch.update(input_ids=ids, labels=labels, attention_mask=mask)
        pixels = [x["pixel_values"] for x in good if "pixel_values" in x]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch
