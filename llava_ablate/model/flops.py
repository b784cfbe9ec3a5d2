"""FLOPs of a training step of a LLaVA variant, the vision tower included: for MFU and HFU.

Counted, as matrix multiplies (2 FLOPs per multiply-add; norms, activations and softmax are
left out, as in every MFU convention): the vision tower per view at its resolution (patch
embedding, attention projections, attention scores over the view's tokens, MLP), the projector
per image token, the LLM per token (projections with grouped KV heads, gated MLP), attention over
each sequence's own length, and the LM head only at supervised positions (the loss computes
logits nowhere else, train/loss.py). Attention counts the full s x s score matrix of a length-s
sequence (the PaLM / Megatron convention; causal kernels skip about half of it).

Backward: a part whose weights train costs 2x its forward (gradients of inputs and of weights);
a frozen part that gradients must cross (something before it trains, or LoRA adapters inside
it) costs 1x for its weights and 2x for attention; a frozen part with nothing trained before it
(stage 1's tower) costs nothing.

- **model FLOPs** (MFU): real tokens only -- each sample's own length, packed or padded, the
  padding and the text-only batches' placeholder image excluded -- forward and backward, no
  recompute.
- **hardware FLOPs** (HFU): what the kernels compute -- padded rows (every row's attention over
  the full width unless flash-attention runs each sequence on its own), placeholder images, and
  the extra forward of the layers that gradient checkpointing recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

PARTS = ("vision", "projector", "llm")  # in the order the forward runs them


@dataclass(frozen=True)
class Forward:
    """Forward FLOPs of one part: through weights, and attention scores (no weights)."""

    weights: float = 0.0
    attention: float = 0.0
    recomputable: bool = True  # its layers are what gradient checkpointing recomputes

    def __add__(self, other: Forward) -> Forward:
        return Forward(self.weights + other.weights, self.attention + other.attention)


def _layers(layers: int, tokens: float, hidden: int, q: int, kv: int, ffn: int, mats: int,
            attention: float) -> Forward:  # fmt: skip
    """`layers` transformer layers over `tokens` tokens; `attention`: sum of s^2 over sequences."""
    projections = 2 * tokens * hidden * (2 * q + 2 * kv)  # Q and O: hidden x q; K, V: hidden x kv
    mlp = 2 * tokens * hidden * ffn * mats
    return Forward(layers * (projections + mlp), layers * 4 * attention * q)


@dataclass(frozen=True)
class FlopModel:
    """The shapes that set a variant's FLOPs, and which parts train."""

    vision_layers: int
    vision_hidden: int
    vision_ffn: int
    vision_tokens: int  # per view, as the tower encodes it (CLIP's CLS included)
    patch_dim: int  # channels x patch x patch: the patch embedding's input
    patches: int  # patches per view
    projector_in: int
    projector_tokens: int  # image features per view that reach the projector
    llm_layers: int
    llm_hidden: int
    llm_q: int  # heads x head dim
    llm_kv: int  # KV heads x head dim (grouped-query attention)
    llm_ffn: int
    llm_mlp_mats: int  # 3 for a gated (SwiGLU) MLP
    vocab: int
    trained: tuple[bool, bool, bool]  # weights trained: vision, projector, llm
    adapters_in_llm: bool = False  # LoRA: the LLM's weights frozen, gradients cross it
    recompute: bool = False  # gradient checkpointing
    varlen_attention: bool = False  # flash-attention: each sequence attends within its length
    # How a batch's tensors map to views and images (batch_shape).
    image_token_id: int = -1
    view_size: int = 0  # the tower's input side
    tile_grid: tuple[tuple[int, int], ...] | None = None  # anyres pinpoints; None: one view

    def vision(self, views: float) -> Forward:
        embed = 2 * views * self.patches * self.patch_dim * self.vision_hidden
        h = self.vision_hidden
        body = _layers(self.vision_layers, views * self.vision_tokens, h, h, h, self.vision_ffn, 2,
                       views * self.vision_tokens**2)  # fmt: skip
        return Forward(embed, 0.0, recomputable=False) + body

    def projector(self, views: float) -> Forward:
        tokens, out = views * self.projector_tokens, self.llm_hidden
        return Forward(2 * tokens * (self.projector_in * out + out * out), recomputable=False)

    def llm(self, tokens: float, attention: float) -> Forward:
        return _layers(self.llm_layers, tokens, self.llm_hidden, self.llm_q, self.llm_kv,
                       self.llm_ffn, self.llm_mlp_mats, attention)  # fmt: skip

    def head(self, supervised: float) -> Forward:
        return Forward(2 * supervised * self.llm_hidden * self.vocab, recomputable=False)

    def backward(self, part: int, fwd: Forward) -> float:
        """Backward FLOPs of `part`'s forward `fwd` (PARTS order)."""
        crossed = any(self.trained[:part]) or self.trained[part]
        crossed = crossed or (part == 2 and self.adapters_in_llm)
        if not crossed:
            return 0.0
        return fwd.weights * (1 + self.trained[part]) + 2 * fwd.attention

    def step(self, views: float, tokens: float, attention: float, supervised: float) -> float:
        """Forward + backward FLOPs of one micro-batch; `recompute` adds the checkpointed
        layers' second forward (hardware FLOPs only: pass a model without it for MFU)."""
        total = 0.0
        llm = self.llm(tokens, attention)
        for i, parts in enumerate(([self.vision(views)], [self.projector(views)],
                                   [llm, self.head(supervised)])):  # fmt: skip
            for fwd in parts:
                back = self.backward(i, fwd)
                again = fwd.weights + fwd.attention if (self.recompute and back
                                                        and fwd.recomputable) else 0.0  # fmt: skip
                total += fwd.weights + fwd.attention + back + again
        return total


def flop_model(model, trained: dict[str, bool], *, lora: bool = False, recompute: bool = False,
               attn_implementation: str = "sdpa") -> FlopModel:  # fmt: skip
    """The FLOP shapes of a built (or meta-device) LLaVA / LLaVA-OneVision model."""
    config = model.config
    vc, tc = config.vision_config, config.text_config
    patches = (vc.image_size // vc.patch_size) ** 2
    cls = 1 if vc.model_type.startswith("clip") else 0
    keep_cls = config.vision_feature_select_strategy == "full"
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_heads = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    return FlopModel(
        vision_layers=vc.num_hidden_layers,
        vision_hidden=vc.hidden_size,
        vision_ffn=vc.intermediate_size,
        vision_tokens=patches + cls,
        patch_dim=vc.num_channels * vc.patch_size**2,
        patches=patches,
        projector_in=vc.hidden_size * _feature_layers(config),
        projector_tokens=patches + (cls if keep_cls else 0),
        llm_layers=tc.num_hidden_layers,
        llm_hidden=tc.hidden_size,
        llm_q=tc.num_attention_heads * head_dim,
        llm_kv=kv_heads * head_dim,
        llm_ffn=tc.intermediate_size,
        llm_mlp_mats=3 if tc.model_type in ("llama", "qwen2", "mistral", "qwen3") else 2,
        vocab=tc.vocab_size,
        trained=tuple(bool(trained.get(p)) for p in PARTS),
        adapters_in_llm=lora,
        recompute=recompute,
        varlen_attention=attn_implementation == "flash_attention_2",
        image_token_id=config.image_token_id,
        view_size=vc.image_size,
        tile_grid=tuple(map(tuple, grid))
        if (grid := getattr(config, "image_grid_pinpoints", None))
        else None,  # fmt: skip
    )


def _feature_layers(config) -> int:
    layer = config.vision_feature_layer
    return 1 if isinstance(layer, int) else len(layer)  # several layers are concatenated


@dataclass(frozen=True)
class BatchShape:
    """What a micro-batch asks of the model, read from its tensors."""

    views: float  # tower views of the real images
    views_computed: float  # ... of every image row the tower runs (placeholders included)
    tokens: float  # real tokens
    tokens_computed: float  # rows x width
    attention: float  # sum of s^2 over the real sequences (packed rows: each sample)
    attention_padded: float  # rows x width^2
    supervised: float  # positions where the LM head runs


def batch_shape(batch: dict, fm: FlopModel) -> BatchShape:
    """The shape of a collated micro-batch (data/encode.py's keys) for `fm`'s model."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    lengths = _sequence_lengths(mask, batch.get("position_ids"))
    computed = _images(batch, fm) if "pixel_values" in batch else 0
    images = computed if bool((ids == fm.image_token_id).any()) else 0  # else: a placeholder
    return BatchShape(
        views=float(images),
        views_computed=float(computed),
        tokens=float(mask.sum()),
        tokens_computed=float(rows * width),
        attention=float(sum(s * s for s in lengths)),
        attention_padded=float(rows * width * width),
        supervised=float((batch["labels"][:, 1:] != -100).sum()),
    )


def _images(batch: dict, fm: FlopModel) -> int:
    """Tower views the model encodes for this batch's pixel_values (anyres: as the model
    counts them from image_sizes, one base view for an image of a multi-image sample)."""
    pixels = batch["pixel_values"]
    if pixels.dim() == 4 or fm.tile_grid is None:
        return int(pixels.shape[0])
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches,
    )

    per_sample = batch.get("batch_num_images")
    single = [True] * len(batch["image_sizes"]) if per_sample is None else [
        int(n) == 1 for n in per_sample for _ in range(int(n))]  # fmt: skip
    return sum(
        image_size_to_num_patches(size, [list(g) for g in fm.tile_grid], fm.view_size) if one else 1
        for size, one in zip(batch["image_sizes"].tolist(), single, strict=True)
    )  # fmt: skip


def _sequence_lengths(mask: torch.Tensor, position_ids: torch.Tensor | None) -> list[int]:
    """Each sample's length: a row's real tokens, or (packed rows) the runs between the points
    where position_ids restart at 0."""
    lengths = []
    for row in range(mask.shape[0]):
        n = int(mask[row].sum())
        if position_ids is None:
            lengths.append(n)
            continue
        starts = (position_ids[row, :n] == 0).nonzero().flatten().tolist() + [n]
        lengths += [b - a for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
    return lengths


def step_flops(fm: FlopModel, shape: BatchShape) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one micro-batch."""
    model = replace(fm, recompute=False).step(shape.views, shape.tokens, shape.attention,
                                              shape.supervised)  # fmt: skip
    attention = shape.attention if fm.varlen_attention else shape.attention_padded
    hardware = fm.step(shape.views_computed, shape.tokens_computed, attention, shape.supervised)
    return model, hardware
