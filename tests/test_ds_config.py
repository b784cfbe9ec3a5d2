from __future__ import annotations

import pytest

from llava_ablate.config import ConfigError, DeepSpeedCfg, LearningRates, RecipeCfg
from llava_ablate.train.ds_config import (
    deepspeed_config,
    lr_factor,
    lr_schedule,
    plan_batches,
    total_steps,
)


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
    assert "scheduler" not in cfg  # lr_schedule is passed to deepspeed.initialize instead
    assert "auto" not in str(cfg)


def test_schedule_warms_up_over_warmup_ratio_of_the_steps():
    factor = lr_factor(_recipe(warmup_ratio=0.03, min_lr_ratio=0.1), 2000)  # 60 warmup steps
    assert factor(0) == pytest.approx(1 / 60) and factor(59) == 1.0
    assert 0.1 < factor(1999) < factor(1000) < factor(60) < 1.0  # cosine towards 0.1 x lr
    assert factor(1999) == pytest.approx(0.1, abs=1e-5)


def test_constant_schedule_keeps_lr_after_warmup():
    factor = lr_factor(_recipe(schedule="constant", warmup_ratio=0.1), 100)
    assert [factor(s) for s in (0, 9)] == [0.1, 1.0]
    assert all(factor(s) == 1.0 for s in range(10, 100))
    no_warmup = lr_factor(_recipe(schedule="constant", warmup_ratio=0.0), 100)
    assert no_warmup(0) == 1.0  # warmup_ratio=0: the first step at the full lr


def _lrs_of_each_step(recipe: RecipeCfg, steps: int) -> list[list[float]]:
    """The lr of every param group during each optimizer step of a real DeepSpeed engine,
    built as train/run.py builds it."""
    import deepspeed
    import torch

    from llava_ablate.base.distributed import init_distributed

    init_distributed()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    groups = [  # two modules at their own lrs: the schedule scales each
        {"params": model[0].parameters(), "lr": 1e-3},
        {"params": model[1].parameters(), "lr": 1e-2},
    ]
    plan = plan_batches(recipe, 1)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(groups),
        config=deepspeed_config(DeepSpeedCfg(name="z0", zero_stage=0), recipe, plan, steps, "fp32"),
        lr_scheduler=lr_schedule(recipe, steps),
    )
    used = []
    for _ in range(steps):
        used.append([g["lr"] for g in engine.optimizer.param_groups])  # what this step uses
        loss = engine(torch.ones(recipe.micro_batch_size, 4)).sum()
        engine.backward(loss)
        engine.step()
    return used


def test_warmup_trains_from_the_first_step(world_of_one):
    # 4 warmup steps of 10: step k of the warmup uses k/4 of each group's lr (as a linear
    # warmup that starts above zero: no optimizer step is spent at lr 0), then cosine to 0.
    recipe = _recipe(global_batch_size=2, micro_batch_size=2, warmup_ratio=0.4)
    used = _lrs_of_each_step(recipe, 10)
    first = used[0]
    assert all(lr > 0 for lr in first), f"step 1 trains at lr {first}"
    assert used[0] == pytest.approx([1e-3 / 4, 1e-2 / 4])
    assert used[1] == pytest.approx([1e-3 / 2, 1e-2 / 2])
    assert used[3] == pytest.approx([1e-3, 1e-2])  # the warmup's last step: the full lr
    decay = [lr for lr, _ in used[3:]]
    assert decay == sorted(decay, reverse=True) and 0 < decay[-1] < 0.1 * 1e-3  # cosine to ~0
