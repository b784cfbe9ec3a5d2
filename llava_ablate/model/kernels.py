"""Fused GPU kernels for the LLM (`recipe.kernels`): none, or liger-kernel's Triton RMSNorm, RoPE
and SwiGLU, patched into the LLM instance by liger's own `_apply_liger_kernel_to_instance`.

Liger's fused linear cross-entropy is not applied: it would replace the CausalLM forward with
one that reads `lm_head.weight` directly (no ZeRO-3 gather), and the loss already keeps the
head at the supervised positions only, chunked (train/loss.py), which removes the same logits
memory. Liger's RoPE patch is module-wide (every model of that family in the process).
"""

from __future__ import annotations

import logging

import torch

from llava_ablate.base.config import choices_of
from llava_ablate.config import RecipeCfg

log = logging.getLogger("llava_ablate.model")

KERNELS = choices_of(RecipeCfg, "kernels")
INSTALL = "pip install 'llava-ablate[liger]' (liger-kernel; it needs triton, a CUDA build)"


class KernelsUnavailable(RuntimeError):
    """recipe.kernels asks for kernels this machine or this LLM family cannot run."""


def apply_kernels(llm: torch.nn.Module, kernels: str, cuda: bool | None = None) -> None:
    """Patch `llm` (the Llava's language model, e.g. `model.model.language_model`) in place.
    `cuda`: whether the run trains on a CUDA GPU (default: whether one is visible)."""
    if kernels == "none":
        return
    if kernels != "liger":
        raise KernelsUnavailable(f"recipe.kernels={kernels!r}; choose one of {list(KERNELS)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        raise KernelsUnavailable(
            "recipe.kernels=liger runs liger-kernel's Triton kernels, which need a CUDA GPU; "
            "this run has none: set recipe.kernels=none"
        )
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as e:
        raise KernelsUnavailable(
            f"recipe.kernels=liger but liger-kernel cannot be imported ({e}): {INSTALL}; "
            "or set recipe.kernels=none"
        ) from e
    family = llm.config.model_type
    if family not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise KernelsUnavailable(
            f"recipe.kernels=liger: liger-kernel has no kernels for the LLM family {family!r} "
            f"(it supports {sorted(k for k in MODEL_TYPE_TO_APPLY_LIGER_FN if k)}); "
            "set recipe.kernels=none"
        )
    # liger's apply functions take the flags they know; the loss stays ours (see above).
    _apply_liger_kernel_to_instance(
        model=llm,
        rms_norm=True,
        rope=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    log.info("recipe.kernels=liger: fused RMSNorm, RoPE and SwiGLU in the %s LLM", family)
