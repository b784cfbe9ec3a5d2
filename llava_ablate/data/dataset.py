"""Turn LLaVA records into model inputs; bad samples become counted skips, never silent drops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from llava_ablate.data.conversation import (
    EmptySupervision,
    MalformedConversation,
    SampleTooLong,
    TokenizationMismatch,
    tokenize_conversation,
)
from llava_ablate.data.images import load_rgb, mean_colour, pad_to_square
from llava_ablate.data.llava_json import Record


@dataclass
class Skip:
    """A sample that was not used, and why (aggregated into the run's skip counts)."""

    id: str
    reason: str
    detail: str = ""


@dataclass
class TokenizeOptions:
    prompt_format: str
    num_image_tokens: int
    max_length: int
    overflow: str
    pad_to_square: bool


class LlavaDataset(Dataset):
    def __init__(self, records: list[Record], processor, options: TokenizeOptions):
        self.records = records
        self.processor = processor
        self.options = options
        self._fill = mean_colour(processor.image_processor)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | Skip:
        rec = self.records[index]
        opt = self.options
        tags = sum(str(t.get("value", "")).count("<image>") for t in rec.conversations)
        if tags != len(rec.images):
            return Skip(rec.id, "image_tag_mismatch")
        try:
            sample = tokenize_conversation(
                rec.id,
                rec.conversations,
                self.processor.tokenizer,
                prompt_format=opt.prompt_format,
                num_image_tokens=opt.num_image_tokens,
                max_length=opt.max_length,
                overflow=opt.overflow,
            )
        except SampleTooLong:
            return Skip(rec.id, "too_long")
        except EmptySupervision:
            return Skip(rec.id, "empty_supervision")
        except MalformedConversation as e:
            return Skip(rec.id, "malformed_conversation", str(e))
        except TokenizationMismatch as e:
            # Never trained on with a wrong mask; one odd sample is skipped and counted, a template
            # that mismatches systematically trips data.max_bad_fraction and stops the run.
            return Skip(rec.id, "tokenization_mismatch", str(e))
        images = []
        for path in rec.images:
            try:
                image = load_rgb(path)
            except FileNotFoundError:
                return Skip(rec.id, "missing_image", str(path))
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                return Skip(rec.id, "corrupt_image", f"{path}: {e}")
            images.append(pad_to_square(image, self._fill) if opt.pad_to_square else image)
        out = {
            "id": rec.id,
            "input_ids": torch.tensor(sample.input_ids),
            "labels": torch.tensor(sample.labels),
        }
        if images:
            pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            out["pixel_values"] = pixels
        return out


class Collator:
    """Right-pad a micro-batch; skipped samples are dropped from it and reported by reason."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict | Skip]) -> dict:
        good = [x for x in items if not isinstance(x, Skip)]
        skipped = Counter(x.reason for x in items if isinstance(x, Skip))
        batch: dict = {
            "skipped": dict(skipped),
            "skip_details": [x for x in items if isinstance(x, Skip)],
            "ids": [x["id"] for x in good],
        }
        if not good:
            return batch
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
