"""One training run, start to finish: config -> variant -> DeepSpeed -> loop -> export."""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from llava_ablate.config import ConfigError, to_object
from llava_ablate.data.builtin import prepare_builtin
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.mixture import open_mixture, skip_report
from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader, StreamPlan
from llava_ablate.eval.hook import TrainingEvalHook
from llava_ablate.model.build import build_variant
from llava_ablate.model.export import export_engine, is_exported
from llava_ablate.model.freeze import apply_training_plan, format_plan
from llava_ablate.model.init_from import load_parts
from llava_ablate.model.lora import apply_lora
from llava_ablate.run_identity import check_run_identity, record_run_identity
from llava_ablate.train import checkpoint
from llava_ablate.train.distributed import (
    DistInfo,
    dtype_for,
    init_distributed,
    resolve_precision,
    shutdown_distributed,
)
from llava_ablate.train.ds_config import deepspeed_config, lr_schedule, plan_batches, total_steps
from llava_ablate.train.faults import RunFault
from llava_ablate.train.loop import LoopOptions, TrainState, agreed_evaluation, train_loop
from llava_ablate.train.metrics import MetricsLogger
from llava_ablate.train.preemption import StopFlag, ignore_stop_signals
from llava_ablate.train.tracking import Tracker

log = logging.getLogger("llava_ablate.train")


class TrainingInterrupted(RuntimeError):
    """The run checkpointed and stopped on request (preemption); running it again resumes."""


def _setup_logging(info: DistInfo) -> None:
    import transformers

    level = logging.INFO if info.is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", force=True)
    transformers.logging.set_verbosity_warning()
    # DeepSpeed still calls torch.distributed APIs that torch 2.13 deprecates, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    transformers.logging.disable_progress_bar()


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(dcfg: DictConfig) -> Path:
    """Train the composed variant; returns the export directory. Resumes automatically."""
    cfg = to_object(dcfg)  # validation errors surface before any distributed start-up
    run_dir = Path(cfg.train.run_dir)
    export_dir = run_dir / "export"
    # Before any work: the directory must hold this config (or none yet), so a re-run never
    # resumes, overwrites or calls "finished" another config's run (run_identity.py).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    identity = check_run_identity(dcfg, run_dir, world_size=world)
    init_from = cfg.recipe.init_from
    if init_from and not is_exported(export_dir) and not Path(init_from).is_dir():
        raise ConfigError(
            f"recipe.init_from={init_from}: no such directory; train the previous stage to "
            "completion first (its export/ directory), or fix the path"
        )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    info = init_distributed(cfg.train.dist_timeout_s)
    _setup_logging(info)
    if is_exported(export_dir):
        log.info("%s already finished (export at %s); nothing to do", run_dir, export_dir)
        shutdown_distributed()
        return export_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        record_run_identity(dcfg, run_dir, identity)  # config.yaml + run_identity.json, once
        log.info("run %s: config hash %s", run_dir, identity.config_hash)
    precision = resolve_precision(cfg.train.precision)
    _seed(cfg.train.seed)

    # Data before the model: a missing file fails in seconds, not after loading 7B weights.
    prepare_builtin(cfg.data, cfg.train.seed)
    mixture = open_mixture(cfg.data, cfg.train.seed)
    log.info(
        "mixture %s: %s",
        mixture.name,
        ", ".join(f"{s.cfg.name}={s.selected}" for s in mixture.sources),
    )
    if mixture.build_skips():  # rows the build dropped never reach the run's own counts
        log.warning(
            "the build skipped source rows, by reason: %s (listed in %s/<source>/skipped.jsonl)",
            mixture.build_skips(),
            cfg.data.shards_dir,
        )

    variant = build_variant(
        cfg.vision,
        cfg.llm,
        cfg.projector,
        cache_dir=cfg.paths.cache_dir,
        attn_implementation=cfg.train.attn_implementation,
        dtype=dtype_for(precision),
    )
    model = variant.model
    recipe = cfg.recipe
    if recipe.init_from:
        load_parts(model, recipe.init_from, recipe.init_parts)
    if recipe.lora is not None:
        model = apply_lora(model, recipe.lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    param_groups, counts = apply_training_plan(
        model,
        recipe.lr,
        weight_decay=recipe.weight_decay,
        lora=recipe.lora is not None,
        vision_feature_layer=cfg.vision.feature_layer,
    )
    log.info("trainable parameters per module:\n%s", format_plan(counts))

    plan = plan_batches(recipe, info.world)
    encoder = SampleEncoder(
        variant.processor,
        EncodeOptions(
            prompt_format=recipe.prompt_format,
            num_image_tokens=variant.num_image_tokens,
            max_length=recipe.max_length,
            overflow=recipe.overflow,
            pad_to_square=cfg.vision.image_aspect == "pad",
        ),
    )
    placeholder = encoder.image_placeholder(model.config.image_token_index)
    stream = ShardStream(
        StreamPlan(mixture, cfg.train.seed, shuffle_buffer=1000),
        encoder,
        Collator(variant.tokenizer.pad_token_id, placeholder),
        BatchingOptions(
            plan.micro_batch, cfg.data.batching.group_by_length, cfg.data.batching.group_buffer
        ),
        rank=info.rank,
        world=info.world,
        workers=cfg.data.num_workers,
    )
    loader = StreamingLoader(stream, cfg.data.num_workers, worker_init_fn=ignore_stop_signals)
    steps = total_steps(recipe, stream.batches_per_epoch() * plan.micro_batch * info.world)
    ds_config = deepspeed_config(cfg.deepspeed, recipe, plan, steps, precision)
    log.info(
        "%d samples/epoch, %d steps, global batch %d = %d micro x %d accum x %d ranks, %s, ZeRO-%d",
        stream.batches_per_epoch() * plan.micro_batch * info.world,
        steps,
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        info.world,
        precision,
        cfg.deepspeed.zero_stage,
    )
    if info.is_main:
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2))

    import deepspeed

    optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999), eps=1e-8)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lr_schedule(recipe, steps),  # warmup from step 1, not lr 0 (ds_config.py)
    )

    state = TrainState()
    tracker = None
    if info.is_main:
        w = cfg.wandb
        tracker = Tracker(
            enabled=w.enabled,
            project=w.project,
            entity=w.entity,
            group=w.group,
            name=w.name or run_dir.name,
            run_dir=run_dir,
            run_id=identity.wandb_id,  # the same identity as the directory and the report
            run_hash=identity.run_hash,
            mode=w.mode,
            config=OmegaConf.to_container(dcfg, resolve=True),  # type: ignore[arg-type]
        )
    metrics = MetricsLogger(run_dir, enabled=info.is_main, tracker=tracker)
    ckpt_dir = run_dir / "checkpoints"
    latest = checkpoint.latest_complete(ckpt_dir)
    if latest is not None:
        client, rank_state = checkpoint.load(engine, latest)
        state.step, state.nonfinite = client["step"], client["nonfinite"]
        state.samples = rank_state["samples"]
        state.skipped.update(rank_state["skipped"])
        loader.load_state_dict(rank_state["data"])
        checkpoint.set_rng_state(rank_state["rng"])
        log.info("resumed from %s at step %d", latest, state.step)
    metrics.truncate_after(state.step)  # also drops lines of an attempt that never checkpointed

    def rank_state_now(s: TrainState) -> dict:
        return {
            "samples": s.samples,
            "skipped": dict(s.skipped),
            "data": loader.state_dict(),
            "rng": checkpoint.rng_state(),
        }

    hook = TrainingEvalHook(
        cfg.eval, variant.processor, run_dir, pad_to_square=cfg.vision.image_aspect == "pad"
    )

    def evaluate(step: int, final: bool) -> dict | None:
        results = hook.maybe_run(engine.module, step, final=final)  # collective: every rank
        if results and tracker is not None:
            for name, rows in hook.last_per_class.items():
                tracker.log_table(f"eval/{name}/per_class", rows, step=step)
        return results

    stop_flag = StopFlag()
    opts = LoopOptions(
        total_steps=steps,
        log_every=cfg.train.log_every,
        save_every=cfg.train.save_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        nan_skip_limit=cfg.train.nan_skip_limit,
        max_bad_fraction=cfg.data.max_bad_fraction,
        checkpoint_dir=ckpt_dir,
        micro_batch=plan.micro_batch,
        stop_requested=stop_flag,
        evaluate=lambda step: evaluate(step, final=False),
    )
    try:
        state = train_loop(engine, iter(loader), state, opts, metrics, rank_state_now)
        if not state.stopped_early:
            if state.step > (int(latest.name.split("_")[1]) if latest else -1):
                checkpoint.save(
                    engine,
                    ckpt_dir,
                    state.step,
                    state.client_state(),
                    rank_state_now(state),
                    cfg.train.keep_checkpoints,
                )
            final_eval = agreed_evaluation(lambda s: evaluate(s, final=True), state.step)
    except BaseException as e:
        if tracker is not None:
            tracker.finish(exit_code=1)
        if isinstance(e, RunFault):  # every rank raised this same fault: leave together
            shutdown_distributed()
        raise
    finally:
        stop_flag.restore()
        loader.close()  # its workers ignore SIGTERM: stop them before anything else can hang
    if state.stopped_early:
        log.warning(
            "stopped at step %d of %d after a stop signal; re-run to resume", state.step, steps
        )
        if tracker is not None:
            tracker.finish(exit_code=1, preempted=True)
        shutdown_distributed()  # every rank checkpointed and stops here
        raise TrainingInterrupted(f"stopped at step {state.step} of {steps} (signal)")
    if final_eval:
        metrics.log(state.step, final_eval)
    skipped = _global_skips(state)
    if tracker is not None:
        tracker.log({f"data/skipped_{k}": v for k, v in skipped.items()}, step=state.step)
    if info.is_main:
        report = skip_report(mixture, skipped)  # run-time counts next to the build's
        (run_dir / "data_skips.json").write_text(json.dumps(report, indent=2))
        if skipped or report["build"]:
            log.warning(
                "samples skipped during training, by reason: %s; at build time: %s",
                skipped,
                report["build"],
            )
    if cfg.train.export:
        export_engine(
            engine,
            variant.processor,
            export_dir,
            {
                "variant": {
                    k: OmegaConf.to_container(dcfg[k], resolve=True)
                    for k in ("vision", "llm", "projector", "data", "recipe")
                },
                "steps": state.step,
                "precision": precision,
            },
        )
    if tracker is not None:
        tracker.finish()
    shutdown_distributed()
    return export_dir


def _global_skips(state: TrainState) -> dict[str, int]:
    gathered: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, dict(state.skipped))
    total: dict[str, int] = {}
    for part in gathered:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total
