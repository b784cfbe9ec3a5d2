"""The loop's guards, in-process on a world of one with a real DeepSpeed engine."""

from __future__ import annotations

import deepspeed
import pytest
import torch

from llava_ablate.base.distributed import init_distributed
from llava_ablate.base.faults import BatchLoadError, EvaluationFailed
from llava_ablate.config import DeepSpeedCfg, LearningRates, RecipeCfg, SourceCfg
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.mixture import open_mixture
from llava_ablate.data.shards import build_mixture
from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader, StreamPlan
from llava_ablate.data.toy_digits import build_toy_digits
from llava_ablate.model.freeze import apply_training_plan
from llava_ablate.train.ds_config import deepspeed_config, plan_batches
from llava_ablate.train.loop import LoopOptions, NonFiniteLoss, TrainState, train_loop
from llava_ablate.train.metrics import MetricsLogger

from conftest import build_tiny
from datagen import data_cfg


def _setup(cache_dir, tmp_path, poison_at: int, fail_at: int | None = None):
    init_distributed()
    variant = build_tiny(cache_dir)
    groups, _ = apply_training_plan(
        variant.model,
        LearningRates(projector=1e-3, llm=1e-3),
        weight_decay=0.0,
        lora=False,
        vision_feature_layer=-2,
    )
    recipe = RecipeCfg(name="t", global_batch_size=4, micro_batch_size=2, max_steps=4)
    plan = plan_batches(recipe, 1)
    engine, *_ = deepspeed.initialize(
        model=variant.model,
        optimizer=torch.optim.AdamW(groups),
        config=deepspeed_config(DeepSpeedCfg(name="z0", zero_stage=0), recipe, plan, 4, "fp32"),
    )
    data = build_toy_digits(cache_dir / "toy_digits")
    mix = data_cfg(
        "toy",
        [
            SourceCfg(
                name="toy_loop_captions", path=str(data / "captions.json"), image_root=str(data)
            )
        ],
        tmp_path / "shards",
    )
    build_mixture(mix, workers=1)
    stream = ShardStream(
        StreamPlan(open_mixture(mix, 0), 0, shuffle_buffer=16),
        SampleEncoder(
            variant.processor,
            EncodeOptions("plain", variant.num_image_tokens, 128, "truncate", True),
        ),
        Collator(variant.tokenizer.pad_token_id),
        BatchingOptions(2, "none", 1),
        rank=0,
        world=1,
        workers=0,
    )

    def batches():
        for i, batch in enumerate(StreamingLoader(stream, 0)):
            if i == fail_at:
                raise OSError(f"Input/output error reading batch {i}")
            if i == poison_at:  # a real corrupt input: NaN pixels make the loss NaN
                batch["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
            yield batch

    def opts(limit, evaluate=None):
        return LoopOptions(
            total_steps=4,
            log_every=1,
            save_every=0,
            keep_checkpoints=1,
            nan_skip_limit=limit,
            max_bad_fraction=0.01,
            checkpoint_dir=tmp_path / "ckpt",
            evaluate=evaluate,
        )

    return engine, batches(), opts, MetricsLogger(tmp_path, enabled=True)


def test_nan_loss_stops_the_run_with_a_clear_message(cache_dir, tmp_path, world_of_one):
    engine, batches, opts, metrics = _setup(cache_dir, tmp_path, poison_at=3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 1 .*nan_skip_limit=0"):
        train_loop(engine, batches, TrainState(), opts(0), metrics, lambda s: {})


def test_nan_loss_within_the_skip_limit_is_skipped(cache_dir, tmp_path, world_of_one):
    engine, batches, opts, metrics = _setup(cache_dir, tmp_path, poison_at=3)
    state = train_loop(engine, batches, TrainState(), opts(1), metrics, lambda s: {})
    assert state.step == 4 and state.nonfinite == 1
    assert all(torch.isfinite(p).all() for p in engine.module.parameters())


# The agreement itself (one rank fails, every rank stops) is tested on two ranks in
# test_faults_ranks.py; here, that each kind of fault is caught and named.


def test_a_batch_that_cannot_be_loaded_stops_the_run_naming_it(cache_dir, tmp_path, world_of_one):
    engine, batches, opts, metrics = _setup(cache_dir, tmp_path, poison_at=-1, fail_at=3)
    with pytest.raises(
        BatchLoadError, match=r"rank 0 could not load a micro-batch at step 1: OSError: .*batch 3"
    ):
        train_loop(engine, batches, TrainState(), opts(0), metrics, lambda s: {})


def test_an_evaluation_error_stops_the_run_naming_it(cache_dir, tmp_path, world_of_one):
    engine, batches, opts, metrics = _setup(cache_dir, tmp_path, poison_at=-1)

    def evaluate(step):
        if step == 2:
            raise FileNotFoundError("eval/mini_classify/test: no such directory")

    with pytest.raises(EvaluationFailed, match=r"evaluation at step 2: FileNotFoundError: eval/"):
        train_loop(engine, batches, TrainState(), opts(0, evaluate), metrics, lambda s: {})
