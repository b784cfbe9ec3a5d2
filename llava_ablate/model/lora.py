"""PEFT LoRA on the LLM, and merging it back for export."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from llava_ablate.config import LoraCfg


def apply_lora(model: torch.nn.Module, cfg: LoraCfg) -> PeftModel:
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,  # a regex: only the LLM's linears, never the tower
        bias="none",
    )
    return get_peft_model(model, config)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with LoRA folded into the base weights (identity for non-PEFT models)."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
