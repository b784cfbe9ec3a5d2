"""Text encoders that rank class names by confusability for `hard` distractors.

CLIP's (or SigLIP's) text tower is the intended encoder. Where none is available the lexical
fallback embeds character 3-grams with TF-IDF weights: it finds names that *look* alike
("tiger shark" / "tiger cat"), not names that mean alike, and is labelled as such in every
question set built with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

log = logging.getLogger(__name__)

LEXICAL_LABEL = "tfidf-char3 (lexical fallback, not semantic)"


@dataclass
class TextEncoder:
    name: str  # recorded in the question set
    embed: Any  # Callable[[list[str]], np.ndarray]: L2-normalised rows


def tfidf_char_embed(texts: list[str]) -> np.ndarray:
    """Character-3-gram TF-IDF vectors of the names, each padded with one space at either end
    (so word starts and ends count): scikit-learn's defaults (raw counts, smooth idf, L2 rows)
    over the exact 3-gram vocabulary of these names.

    Until 2026-11 this hashed the 3-grams into 4096 md5 buckets; on ImageNet's 1000 names the
    collisions gave 9411 pairs with no 3-gram in common a non-zero cosine (up to 0.3), so about
    a quarter of each class's 25 hard distractors changed with the exact vocabulary. Question
    sets frozen before keep their options (they are reused, not rebuilt).
    """
    vectorizer = TfidfVectorizer(
        analyzer="char",
        ngram_range=(3, 3),
        preprocessor=lambda t: f" {t.lower()} ",
        dtype=np.float32,
    )
    return vectorizer.fit_transform(texts).toarray()


def text_tower_limit(model, tokenizer) -> int:
    """Tokens the text tower takes: its position embeddings, or less if the tokenizer says so.
    Longer prompts (ImageNet names reach 32 tokens in a template) are truncated to it; a
    tokenizer without its own limit (model_max_length ~1e30) would otherwise overflow it."""
    config = getattr(model.config, "text_config", model.config)
    limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(limit, tokenizer.model_max_length))


def pooled(out) -> torch.Tensor:
    """The projected features of a `get_text_features`/`get_image_features` call: transformers
    returns a tensor, or an output object whose pooler_output is the projection."""
    return out if torch.is_tensor(out) else out.pooler_output


@torch.no_grad()
def text_features(model, tokenizer, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float text features of a CLIPModel/SiglipModel, one row a prompt, on the
    model's device. Prompts longer than the text tower are truncated to it."""
    # SigLIP was trained on max-length padding; CLIP pads to the longest.
    padding = "max_length" if "siglip" in type(model).__name__.lower() else True
    device = next(model.parameters()).device
    feats = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[i : i + batch_size],
            padding=padding,
            truncation=True,
            max_length=text_tower_limit(model, tokenizer),
            return_tensors="pt",
        ).to(device)
        out = pooled(model.get_text_features(**enc))
        feats.append(torch.nn.functional.normalize(out.float(), dim=-1))
    return torch.cat(feats)


class HFTextTower:
    """The text half of a CLIPModel/SiglipModel: `get_text_features` of "a photo of a {c}."."""

    def __init__(self, model, tokenizer, template: str = "a photo of a {}.", batch_size: int = 256):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.batch_size = template, batch_size

    @classmethod
    def from_pretrained(cls, src: str) -> HFTextTower:
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoModel.from_pretrained(src), AutoTokenizer.from_pretrained(src))

    def __call__(self, texts: list[str]) -> np.ndarray:
        prompts = [self.template.format(t) for t in texts]
        return text_features(self.model, self.tokenizer, prompts, self.batch_size).cpu().numpy()


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
