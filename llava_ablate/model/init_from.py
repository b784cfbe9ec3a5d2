"""Start a stage from a previous stage's export (e.g. stage 2 from stage 1's projector).

Weights are copied into the full, unpartitioned model *before* DeepSpeed wraps it, so loading a
stage-1 projector works the same under ZeRO-3 (LLaVA's `size mismatch ... torch.Size([0])` came
from loading into already-partitioned parameters).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open

log = logging.getLogger(__name__)

# transformers saves Llava and LlavaOnevision in the original llava-hf key layout; map it to
# the module layout.
_SAVED_LAYOUT = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("vision_tower.", "model.vision_tower."),
    ("image_newline", "model.image_newline"),
)


def _module_key(saved: str) -> str:
    for old, new in _SAVED_LAYOUT:
        if saved.startswith(old):
            return new + saved[len(old) :]
    return saved


_PREFIXES = {
    # OneVision's image_newline is part of its connector (trained with the projector).
    "projector": ("model.multi_modal_projector.", "model.image_newline"),
    "vision": ("model.vision_tower.",),
    "llm": ("model.language_model.", "lm_head."),
}


def load_parts(model: torch.nn.Module, export_dir: str | Path, parts: list[str]) -> list[str]:
    """Copy the named parts' tensors from an exported directory; return the loaded keys."""
    export_dir = Path(export_dir)
    files = sorted(export_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"recipe.init_from={export_dir}: no *.safetensors there; run the previous stage "
            "to completion first (its export/ directory), or fix the path"
        )
    prefixes = tuple(p for part in parts for p in _PREFIXES.get(part, ("",)))
    own = model.state_dict()
    loaded: list[str] = []
    with torch.no_grad():
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for saved in fh.keys():
                    key = _module_key(saved)
                    if not key.startswith(prefixes):
                        continue
                    if key not in own:
                        raise KeyError(
                            f"{f}: {saved} does not exist in this variant; was the previous "
                            "stage built with another arch (llava_onevision's image_newline "
                            "has no place in llava)?"
                        )
                    tensor = fh.get_tensor(saved)
                    if tensor.shape != own[key].shape:
                        raise ValueError(
                            f"{f}: {key} has shape {tuple(tensor.shape)} but this variant "
                            f"expects {tuple(own[key].shape)}: was the previous stage built "
                            "with the same vision tower, LLM and projector?"
                        )
                    own[key].copy_(tensor.to(own[key].dtype))
                    loaded.append(key)
    if not loaded:
        raise ValueError(f"recipe.init_from={export_dir}: no tensors for parts {parts}")
    connector = _PREFIXES["projector"] if "projector" in parts else ()
    kept = [k for k in own if connector and k.startswith(connector) and k not in loaded]
    if kept:  # e.g. a LLaVA stage-1 projector handed to OneVision: image_newline starts fresh
        log.warning("not in %s, so left as initialised: %s", export_dir, kept)
    log.info("initialised %s from %s (%d tensors)", parts, export_dir, len(loaded))
    return loaded
