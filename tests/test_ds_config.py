from __future__ import annotations

import pytest

from llava_ablate.config import ConfigError, DeepSpeedCfg, LearningRates, RecipeCfg
from llava_ablate.train.ds_config import deepspeed_config, plan_batches, total_steps


def _recipe(**kw) -> RecipeCfg:
    return RecipeCfg(name="t", lr=LearningRates(projector=1e-3), **kw)


@pytest.mark.parametrize("world,accum", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_accumulation_reaches_the_global_batch_for_any_world(world, accum):
    plan = plan_batches(_recipe(global_batch_size=128, micro_batch_size=16), world)
    assert plan.grad_accum == accum and plan.global_batch == 128


def test_indivisible_world_fails_with_the_numbers():
    with pytest.raises(ConfigError, match="16 x 3"):
        plan_batches(_recipe(global_batch_size=128, micro_batch_size=16), 3)


def test_steps_from_epochs_or_max_steps():
    assert total_steps(_recipe(global_batch_size=128, epochs=1), 665_000) == 5195
    assert total_steps(_recipe(global_batch_size=128, epochs=2), 1000) == 15
    assert total_steps(_recipe(global_batch_size=128, max_steps=7), 10**6) == 7


def test_ds_json_resolves_every_auto_value():
    recipe = _recipe(global_batch_size=256, micro_batch_size=16, warmup_ratio=0.03, grad_clip=1.0)
    plan = plan_batches(recipe, 8)
    cfg = deepspeed_config(
        DeepSpeedCfg(
            name="z3",
            zero_stage=3,
            offload_optimizer=True,
            extra={"zero_optimization": {"reduce_bucket_size": 5}},
        ),
        recipe,
        plan,
        2000,
        "bf16",
    )
    assert cfg["train_batch_size"] == 256 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu"
    assert z["reduce_bucket_size"] == 5  # `extra` merges into, not over, the section
    sched = cfg["scheduler"]["params"]
    assert sched["total_num_steps"] == 2000 and sched["warmup_num_steps"] == 60
    assert "auto" not in str(cfg)


def test_constant_schedule_keeps_lr_after_warmup():
    recipe = _recipe(schedule="constant")
    cfg = deepspeed_config(DeepSpeedCfg(name="z2"), recipe, plan_batches(recipe, 1), 100, "fp32")
    assert cfg["scheduler"]["params"]["cos_min_ratio"] == 1.0
