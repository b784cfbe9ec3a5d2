"""The causal-LM loss with logits only where the loss is.

transformers' Llava forward (`labels=...`) projects every position onto the vocabulary and
upcasts the whole [tokens, vocab] tensor to fp32 for the cross-entropy: at Qwen2's 152k-token
vocabulary that is most of a step's activation memory, although only the supervised positions
(a stage-1 caption: ~3% of the tokens) enter the loss. Here the model's own `logits_to_keep`
(a boolean [batch, seq] mask; `slice_logits_to_keep` in transformers) keeps the head's input
at the positions whose shifted label is supervised, inside the model's forward -- so DeepSpeed's
hooks (ZeRO-3 gathering lm_head, the backward prologue on the engine's outputs) see the usual
call. The cross-entropy then runs over those logits in chunks, each recomputed in the backward
(activation checkpointing), so no fp32 [tokens, vocab] tensor exists beyond one chunk.

The loss is the same number as the full path's: the token losses' sum over `num_items` (the
supervised tokens of the global batch per micro-batch share, train/loop.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100

# Supervised tokens per cross-entropy chunk: its fp32 logits, log-softmax and gradient take
# ~12 bytes x vocab per token (512 x 152,064: ~0.9 GiB at once, in the backward).
LOSS_CHUNK_TOKENS = 512


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose next token is supervised ([batch, seq] bool) and those targets, in
    the row-major order `hidden_states[mask]` takes them."""
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE
    return keep, targets[keep[:, :-1]]


def _chunk_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def token_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, chunk: int = LOSS_CHUNK_TOKENS
) -> torch.Tensor:
    """Sum of the token cross-entropies of `logits` [n, vocab] against `targets` [n], `chunk`
    rows at a time, each recomputed in the backward instead of kept."""
    if logits.shape[0] == 0:  # nothing supervised here: a zero that still reaches the graph
        return logits.float().sum()
    parts = [
        checkpoint(_chunk_loss_sum, lg, tg, use_reentrant=False)
        for lg, tg in zip(logits.split(chunk), targets.split(chunk), strict=True)
    ]
    return torch.stack(parts).sum()


def supervised_loss(
    model, inputs: dict, num_items: torch.Tensor, chunk: int = LOSS_CHUNK_TOKENS
) -> torch.Tensor:
    """The step's loss share of one micro-batch: `model` (a DeepSpeed engine or the Llava /
    LlavaOnevision model itself) runs on `inputs` (its keyword arguments, `labels` included)
    with the head only at the supervised positions; the token losses' sum / `num_items`."""
    labels = inputs["labels"]
    keep, targets = supervised_positions(labels)
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    # No KV cache in training; with one, transformers would not read packed position_ids as
    # separate sequences (and model.config.use_cache does not reach a Llava's LLM).
    logits = model(**rest, use_cache=False, logits_to_keep=keep).logits  # [n_supervised, vocab]
    return token_loss_sum(logits, targets, chunk) / num_items
