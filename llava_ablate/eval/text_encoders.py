"""Text encoders that rank class names by confusability for `hard` distractors.

CLIP's (or SigLIP's) text tower is the intended encoder. Where none is available the lexical
fallback embeds character 3-grams with TF-IDF weights: it finds names that *look* alike
("tiger shark" / "tiger cat"), not names that mean alike, and is labelled as such in every
question set built with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LEXICAL_LABEL = "tfidf-char3 (lexical fallback, not semantic)"


@dataclass
class TextEncoder:
    name: str  # recorded in the question set
    embed: Any  # Callable[[list[str]], np.ndarray]: L2-normalised rows


def _char_ngrams(text: str, n: int = 3) -> list[str]:
    padded = f" {text.lower()} "
    return [padded[i : i + n] for i in range(max(len(padded) - n + 1, 1))]


def tfidf_char_embed(texts: list[str], dim: int = 4096) -> np.ndarray:
    """Hashed character-3-gram TF-IDF vectors (deterministic: md5 buckets, not hash())."""
    grams = [Counter(_char_ngrams(t)) for t in texts]
    df = Counter(g for c in grams for g in c)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, counts in enumerate(grams):
        for g, tf in counts.items():
            bucket = int.from_bytes(hashlib.md5(g.encode()).digest()[:4], "little") % dim
            out[row, bucket] += tf * (math.log((1 + len(texts)) / (1 + df[g])) + 1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def text_tower_limit(model, tokenizer) -> int:
    """Tokens the text tower takes: its position embeddings, or less if the tokenizer says so.
    Longer prompts (ImageNet names reach 32 tokens in a template) are truncated to it; a
    tokenizer without its own limit (model_max_length ~1e30) would otherwise overflow it."""
    config = getattr(model.config, "text_config", model.config)
    limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(limit, tokenizer.model_max_length))


class HFTextTower:
    """The text half of a CLIPModel/SiglipModel: `get_text_features` of "a photo of a {c}."."""

    def __init__(self, model, tokenizer, template: str = "a photo of a {}.", batch_size: int = 256):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.batch_size = template, batch_size

    @classmethod
    def from_pretrained(cls, src: str) -> HFTextTower:
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoModel.from_pretrained(src), AutoTokenizer.from_pretrained(src))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        feats = []
        # SigLIP was trained on max-length padding; CLIP pads to the longest.
        padding = "max_length" if "siglip" in type(self.model).__name__.lower() else True
        for i in range(0, len(texts), self.batch_size):
            chunk = [self.template.format(t) for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(
                chunk,
                padding=padding,
                truncation=True,
                max_length=text_tower_limit(self.model, self.tokenizer),
                return_tensors="pt",
            )
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            out = self.model.get_text_features(**enc)
            out = out if torch.is_tensor(out) else out.pooler_output
            feats.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu())
        return torch.cat(feats).numpy()


def build_text_encoder(spec: str, path: str | None = None) -> TextEncoder:
    """`auto` | `tfidf` | `clip:<hub id or dir>` | `siglip:<hub id or dir>`."""
    if spec == "auto":
        if path:
            spec = f"clip:{path}"
        else:
            log.warning(
                "hard distractors: no CLIP text tower configured (eval.questions."
                "hard_encoder_path); using the %s",
                LEXICAL_LABEL,
            )
            spec = "tfidf"
    if spec == "tfidf":
        return TextEncoder(LEXICAL_LABEL, tfidf_char_embed)
    kind, _, src = spec.partition(":")
    if kind in ("clip", "siglip") and src:
        return TextEncoder(spec, HFTextTower.from_pretrained(src))
    raise ValueError(
        f"eval.questions.encoder={spec!r}; use auto, tfidf, clip:<hub id|dir>, siglip:<hub id|dir>"
    )
