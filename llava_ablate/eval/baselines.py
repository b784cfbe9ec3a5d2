"""CLIP/SigLIP zero-shot baselines as ChoiceModels.

Each class is the mean of its L2-normalised template embeddings ("a photo of a {}.", or CLIP's 80
ImageNet templates); an image is scored by cosine similarity. `likelihood` here means "the best of
the question's options" (the same 26-way questions the MLLMs get), and `all_classes` the argmax
over every class of the dataset (the classic zero-shot number, VLMClassifier's CLIP baseline).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from llava_ablate.eval.scoring import PromptItem
from llava_ablate.eval.text_encoders import pooled, text_features

SIMPLE_TEMPLATES = ["a photo of a {}."]


def load_templates(spec: str) -> list[str]:
    """`simple` | `openai80` (CLIP's ImageNet prompts) | a file with one `{}` template a line."""
    if spec == "simple":
        return list(SIMPLE_TEMPLATES)
    if spec == "openai80":
        text = resources.files("llava_ablate.eval.classnames").joinpath(
            "openai_imagenet_templates.txt"
        )
        lines = text.read_text("utf-8").splitlines()
    else:
        lines = Path(spec).read_text("utf-8").splitlines()
    templates = [t for t in lines if t.strip()]
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"model.templates={spec!r}: every template needs a '{{}}', got {bad[:3]}")
    return templates


class ZeroShotChoiceModel:
    scorers = ("likelihood", "all_classes")

    def __init__(self, model, processor, templates: list[str], batch_size: int = 256):
        self.model, self.processor = model.eval(), processor
        self.templates, self.batch_size = templates, batch_size
        self._text: dict[str, torch.Tensor] = {}
        self.classnames: list[str] = []
        self._class_matrix: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _embed_names(self, names: list[str]) -> None:
        todo = [n for n in dict.fromkeys(names) if n not in self._text]
        if not todo:
            return
        prompts = [t.format(n) for n in todo for t in self.templates]
        feats = text_features(self.model, self.processor.tokenizer, prompts, self.batch_size)
        per_name = feats.view(len(todo), len(self.templates), -1).mean(dim=1)
        for name, f in zip(todo, torch.nn.functional.normalize(per_name, dim=-1), strict=True):
            self._text[name] = f

    def with_classes(self, classnames: list[str]) -> ZeroShotChoiceModel:
        self._embed_names(classnames)
        self.classnames = list(classnames)
        self._class_matrix = torch.stack([self._text[c] for c in classnames])
        return self

    @torch.no_grad()
    def _image_features(self, items: list[PromptItem]) -> torch.Tensor:
        return self.image_features([it.image for it in items])

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        """L2-normalised float image embeddings, one row per PIL image."""
        pixels = self.processor.image_processor(images=images, return_tensors="pt")[
            "pixel_values"
        ].to(self.device, next(self.model.parameters()).dtype)
        out = pooled(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(out.float(), dim=-1)

    def _scale(self, sims: torch.Tensor) -> torch.Tensor:
        # Monotone, so argmaxes are unchanged; it makes `p_pred` the model's own probability.
        scaled = sims * self.model.logit_scale.exp().float()
        bias = getattr(self.model, "logit_bias", None)
        return scaled + bias.float() if bias is not None else scaled

    @torch.no_grad()
    def letter_scores(self, items: list[PromptItem]) -> np.ndarray:
        self._embed_names([o for it in items for o in it.question.options])
        img = self._image_features(items)
        scores = np.full((len(items), 26), -np.inf, dtype=np.float32)
        for i, it in enumerate(items):
            text = torch.stack([self._text[o] for o in it.question.options])
            scores[i, : len(it.question.options)] = self._scale(text @ img[i]).cpu().numpy()
        return scores

    @torch.no_grad()
    def classify_all(self, items: list[PromptItem]) -> list[str]:
        if self._class_matrix is None:
            raise RuntimeError("call with_classes(classnames) before classify_all")
        sims = self.class_similarities([it.image for it in items])
        return [self.classnames[i] for i in sims.argmax(dim=1).tolist()]

    @torch.no_grad()
    def class_similarities(self, images: list) -> torch.Tensor:
        """[len(images), classes] cosine similarity of each image to each class's text."""
        if self._class_matrix is None:
            raise RuntimeError("call with_classes(classnames) before class_similarities")
        return self.image_features(images) @ self._class_matrix.T

    def generate(self, items: list[PromptItem]) -> list[str]:
        raise NotImplementedError("zero-shot baselines have no generate scorer")


def load_zero_shot(path: str, dtype: torch.dtype, device: torch.device, templates: list[str]):
    """A CLIPModel/SiglipModel checkpoint (hub id or directory) as a ZeroShotChoiceModel."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(path, dtype=dtype).to(device)
    if not hasattr(model, "get_image_features"):
        raise ValueError(f"{path} ({type(model).__name__}) is not a CLIP/SigLIP-style model")
    return ZeroShotChoiceModel(model, AutoProcessor.from_pretrained(path), templates)
