"""Which parameters train, at which learning rate: the recipe's per-module plan, logged."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from llava_ablate.config import LearningRates

log = logging.getLogger(__name__)

MODULES = ("vision", "projector", "llm")


def module_of(name: str) -> str:
    """Map a parameter name (plain or PEFT-wrapped) to vision / projector / llm."""
    if "vision_tower." in name:
        return "vision"
    if "multi_modal_projector." in name or name.endswith("image_newline"):
        return "projector"  # OneVision's anyres row separator belongs to the connector
    if "language_model." in name or "lm_head." in name:
        return "llm"
    raise ValueError(f"parameter {name!r} belongs to no known module")


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


@dataclass
class ModuleCount:
    trainable: int = 0
    total: int = 0
    lr: float | None = None


def apply_training_plan(
    model: torch.nn.Module,
    lr: LearningRates,
    *,
    weight_decay: float,
    lora: bool,
    vision_feature_layer,
) -> tuple[list[dict], dict[str, ModuleCount]]:
    """Set requires_grad from the per-module lrs; return optimizer param groups and counts.

    With LoRA the LLM's base weights stay frozen and only its adapters train (PEFT marked them).
    """
    counts = {m: ModuleCount(lr=getattr(lr, m)) for m in MODULES}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        module = module_of(name)
        module_lr = getattr(lr, module)
        train = module_lr is not None
        if module == "llm" and lora:
            train = train and "lora_" in name
        if module == "vision" and "post_layernorm" in name and vision_feature_layer != -1:
            train = False  # unused: features are read before the last layer norm
        if module == "projector" and _is_frozen_identity(model, name):
            train = False
        p.requires_grad_(train)
        c = counts[module]
        c.total += p.numel()
        if train:
            c.trainable += p.numel()
            groups.setdefault((module, _no_decay(name, p)), []).append(p)
    param_groups = [
        {
            "params": params,
            "lr": getattr(lr, module),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{module}{'_no_decay' if no_decay else ''}",
        }
        for (module, no_decay), params in sorted(groups.items())
    ]
    return param_groups, counts


def _is_frozen_identity(model: torch.nn.Module, name: str) -> bool:
    owner = name.rsplit(".", 1)[0]
    module = model.get_submodule(owner)
    return bool(getattr(module, "frozen_identity", False))


def format_plan(counts: dict[str, ModuleCount]) -> str:
    lines = [f"{'module':<10}{'trainable':>14}{'total':>14}{'lr':>10}"]
    for m, c in counts.items():
        lr = "frozen" if c.lr is None else f"{c.lr:.1e}"
        lines.append(f"{m:<10}{c.trainable:>14,}{c.total:>14,}{lr:>10}")
    total = sum(c.trainable for c in counts.values())
    lines.append(f"{'all':<10}{total:>14,}{sum(c.total for c in counts.values()):>14,}")
    return "\n".join(lines)
