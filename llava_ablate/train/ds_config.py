"""The DeepSpeed JSON for a run, with every `auto` resolved from the recipe and world size, and
the lr schedule handed to `deepspeed.initialize`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from llava_ablate.config import ConfigError, DeepSpeedCfg, RecipeCfg

log = logging.getLogger("llava_ablate.train")


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
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.global_batch,
        "gradient_clipping": recipe.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # No "scheduler" section: `lr_schedule` below is passed to deepspeed.initialize.
        # The client AdamW carries per-module param groups; let DeepSpeed offload wrap it.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the project's own logger reports progress
        "wall_clock_breakdown": False,
    }
    # `extra` merges into, not over, a section (lists and scalars replace): OmegaConf's merge.
    return OmegaConf.to_container(OmegaConf.merge(config, ds.extra), resolve=True)


def warmup_steps(recipe: RecipeCfg, steps: int) -> int:
    return int(round(recipe.warmup_ratio * steps))


def lr_factor(recipe: RecipeCfg, steps: int) -> Callable[[int], float]:
    """The multiplier of every param group's own lr (so per-module lrs keep their ratios) for
    the optimizer step that follows `done` steps: a linear warmup whose k-th step uses k/warmup
    (full lr on its last step), then a cosine from 1 to `min_lr_ratio` (constant: stays at 1).

    Not DeepSpeed's WarmupCosineLR: it sets lr 0 at construction and its linear warmup starts
    from 0 again, so the first two optimizer steps trained at lr 0 (and a 4-step warmup peaked
    at 0.93 on step 6). Neither end of this schedule spends a step at exactly the floor.
    """
    warmup = warmup_steps(recipe, steps)
    floor = 1.0 if recipe.schedule == "constant" else recipe.min_lr_ratio
    decay = max(1, steps - warmup)

    def factor(done: int) -> float:
        if done < warmup:
            return (done + 1) / warmup
        progress = min(1.0, (done - warmup + 1) / (decay + 1))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def lr_schedule(
    recipe: RecipeCfg, steps: int
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """`deepspeed.initialize(lr_scheduler=...)`: DeepSpeed builds it on the client optimizer,
    steps it after every optimizer step and saves/restores it with each checkpoint (only the
    step count: the factor is a plain function, so a run continued with more steps follows
    the new schedule)."""
    factor = lr_factor(recipe, steps)

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        log.info(
            "lr schedule: %d warmup steps (step k uses k/%d of each module's lr), then %s to "
            "%g x lr by step %d",
            warmup_steps(recipe, steps),
            max(1, warmup_steps(recipe, steps)),
            recipe.schedule,
            1.0 if recipe.schedule == "constant" else recipe.min_lr_ratio,
            steps,
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return build
