"""The DeepSpeed JSON for a run, with every `auto` resolved from the recipe and world size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llava_ablate.config import ConfigError, DeepSpeedCfg, RecipeCfg


@dataclass
class BatchPlan:
    micro_batch: int
    grad_accum: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world


def plan_batches(recipe: RecipeCfg, world: int) -> BatchPlan:
    """Gradient accumulation that reaches the recipe's global batch for this world size."""
    per_step = recipe.micro_batch_size * world
    if recipe.global_batch_size % per_step:
        raise ConfigError(
            f"recipe.global_batch_size={recipe.global_batch_size} is not divisible by "
            f"recipe.micro_batch_size x world size = {recipe.micro_batch_size} x {world}; "
            "change one of them"
        )
    return BatchPlan(recipe.micro_batch_size, recipe.global_batch_size // per_step, world)


def total_steps(recipe: RecipeCfg, num_samples: int) -> int:
    if recipe.max_steps:
        return recipe.max_steps
    return max(1, math.floor(recipe.epochs * num_samples / recipe.global_batch_size))


def deepspeed_config(
    ds: DeepSpeedCfg, recipe: RecipeCfg, plan: BatchPlan, steps: int, precision: str
) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 3:
        # Gathered 16-bit weights at save time let export skip the fp32 reconstruction.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    warmup = max(1, int(round(recipe.warmup_ratio * steps)))  # DeepSpeed rejects 0
    cos_min = 1.0 if recipe.schedule == "constant" else recipe.min_lr_ratio
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.global_batch,
        "gradient_clipping": recipe.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # WarmupCosineLR scales each param group's own lr, so per-module lrs survive the schedule.
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": steps,
                "warmup_num_steps": warmup,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": cos_min,
                "warmup_type": "linear",
            },
        },
        # The client AdamW carries per-module param groups; let DeepSpeed offload wrap it.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the project's own logger reports progress
        "wall_clock_breakdown": False,
    }
    return _merge(config, dict(ds.extra))


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(dict(base[k]), v)
        else:
            base[k] = v
    return base
