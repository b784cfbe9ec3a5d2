"""One training run, start to finish: config -> variant -> DeepSpeed -> loop -> export.

`run_training` is the list of phases; each phase is a function below, in the same order, and
hands what the next ones need in a small dataclass (`Run`, `Model`, `Data`, `Tracking`,
`Resumed`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from llava_ablate.base.accelerators import peak_flops
from llava_ablate.base.distributed import (
    DistInfo,
    dtype_for,
    init_distributed,
    resolve_precision,
    shutdown_distributed,
)
from llava_ablate.base.faults import RunFault
from llava_ablate.config import Config, to_object
from llava_ablate.data.builtin import prepare_builtin
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.mixture import BuiltMixture, check_image_side, open_mixture, skip_report
from llava_ablate.data.shards import side_text
from llava_ablate.data.stream import (
    BatchingOptions,
    ShardStream,
    StreamingLoader,
    StreamPlan,
    resolve_workers,
)
from llava_ablate.eval.hook import TrainingEvalHook
from llava_ablate.model.archs import arch_for
from llava_ablate.model.build import Variant, build_variant, shard_image_side
from llava_ablate.model.card import evaluations_in, record_evaluations
from llava_ablate.model.export import export_engine, is_exported
from llava_ablate.model.flops import FlopModel, flop_model
from llava_ablate.model.freeze import apply_training_plan, format_plan
from llava_ablate.model.init_from import load_parts
from llava_ablate.model.kernels import apply_kernels
from llava_ablate.model.lora import apply_lora
from llava_ablate.run_environment import (
    read_run_environment,
    record_run_environment,
    warn_resumed_with_changes,
)
from llava_ablate.run_identity import (
    RunIdentity,
    check_init_from,
    check_run_identity,
    record_run_identity,
)
from llava_ablate.tracking import Tracker
from llava_ablate.train import checkpoint
from llava_ablate.train.ds_config import (
    BatchPlan,
    deepspeed_config,
    lr_schedule,
    plan_batches,
    total_steps,
)
from llava_ablate.train.loop import (
    LoopOptions,
    TrainState,
    agreed_evaluation,
    train_loop,
    utilisation,
)
from llava_ablate.train.metrics import MetricsLogger
from llava_ablate.train.preemption import StopFlag, ignore_stop_signals
from llava_ablate.train.run_log import log_failure, log_start, setup_run_logging

log = logging.getLogger("llava_ablate.train")


class TrainingInterrupted(RuntimeError):
    """The run checkpointed and stopped on request (preemption); running it again resumes."""


def run_training(dcfg: DictConfig) -> Path:
    """Train the composed variant; returns the export directory. Resumes automatically."""
    run = start_run(dcfg)  # identity checked, distributed started, train.log open
    if is_exported(run.export_dir):
        log.info("%s already finished (export at %s); nothing to do", run.dir, run.export_dir)
        shutdown_distributed()
        return run.export_dir
    try:
        _train_and_export(run)
    except TrainingInterrupted:
        raise  # logged as a warning where it stops
    except BaseException as error:
        log_failure(error)  # every rank's error in train.log, not only on its terminal
        raise
    return run.export_dir


def _train_and_export(run: Run) -> None:
    precision = claim_run_dir(run)
    # Data before the model: a missing file fails in seconds, not after loading 7B weights.
    mixture = open_data(run.cfg)
    model = build_model(run.cfg, precision)
    data = build_stream(run, mixture, model)
    engine = start_engine(run, model, data)
    tracking = open_tracking(run)
    resumed = resume(run, engine, data.loader, tracking.metrics)
    evaluate = open_evaluation(run, model, engine, tracking.tracker)
    state, final_eval = train(run, data, model, engine, tracking, resumed, evaluate)
    finish(run, data, model, engine, tracking, state, final_eval)


# --- phases, in order -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Who this run is and where it lives; fixed before any work."""

    dcfg: DictConfig  # as composed (recorded, hashed, sent to W&B)
    cfg: Config  # validated
    identity: RunIdentity
    info: DistInfo

    @property
    def dir(self) -> Path:
        return Path(self.cfg.train.run_dir)

    @property
    def export_dir(self) -> Path:
        return self.dir / "export"

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"


def start_run(dcfg: DictConfig) -> Run:
    """Validate, check the run directory's identity, start torch.distributed and logging."""
    cfg = to_object(dcfg)  # validation errors surface before any distributed start-up
    run_dir = Path(cfg.train.run_dir)
    # Before any work: the directory must hold this config (or none yet), so a re-run never
    # resumes, overwrites or calls "finished" another config's run (run_identity.py).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    identity = check_run_identity(dcfg, run_dir, world_size=world)
    check_init_from(cfg.recipe.init_from, run_dir)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    info = init_distributed(cfg.train.dist_timeout_s)
    setup_run_logging(run_dir, info.rank)
    log_start(run_dir, identity.config_hash)
    return Run(dcfg, cfg, identity, info)


def claim_run_dir(run: Run) -> str:
    """Record the run's identity (config.yaml + run_identity.json, once) and its environment
    (environment.json: a resume on other software warns, naming each difference) and seed;
    returns the precision (bf16/fp16/fp32) resolved for this machine."""
    run.dir.mkdir(parents=True, exist_ok=True)
    if run.info.is_main:
        record_run_identity(run.dcfg, run.dir, run.identity)
        warn_resumed_with_changes(record_run_environment(run.dir))
    precision = resolve_precision(run.cfg.train.precision)
    _seed(run.cfg.train.seed)
    return precision


def open_data(cfg: Config) -> BuiltMixture:
    """The mixture's shards (built-in data generated first); logs what each source gives."""
    image_side = shard_image_side(cfg.vision, cfg.data.max_image_side, cfg.arch)
    prepare_builtin(cfg.data, cfg.train.seed, image_side)
    # The run's overrides: a damaged shard's message names the rebuild command that composes
    # this same mixture (user config folder, paths, shard size, tower) and so works.
    mixture = open_mixture(cfg.data, cfg.train.seed, job_overrides())
    check_image_side(mixture, image_side)  # a 336 px build under a 1152 px run is refused
    log.info(
        "images: this run reads %s (data.max_image_side=%s); decoding at reduced scale where "
        "the source is much larger",
        side_text(image_side),
        cfg.data.max_image_side,
    )
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
    return mixture


@dataclass
class Model:
    variant: Variant  # the model as built, with its processor
    module: torch.nn.Module  # what trains: the variant's model, LoRA-wrapped if configured
    param_groups: list[dict]  # for the optimizer: what trains, at which lr
    precision: str  # bf16 | fp16 | fp32: its weights, DeepSpeed's mixed precision
    flops: FlopModel  # its FLOP shapes, what trains included: MFU and HFU (model/flops.py)


def build_model(cfg: Config, precision: str) -> Model:
    """The variant, its init_from parts, LoRA, and which parameters train (logged)."""
    variant = build_variant(
        cfg.vision,
        cfg.llm,
        cfg.projector,
        arch=cfg.arch,
        cache_dir=cfg.paths.cache_dir,
        attn_implementation=cfg.train.attn_implementation,
        dtype=dtype_for(precision),
    )
    model = variant.model
    recipe = cfg.recipe
    apply_kernels(model.model.language_model, recipe.kernels)
    if recipe.init_from:
        load_parts(model, recipe.init_from, recipe.init_parts)
    if recipe.lora is not None:
        model = apply_lora(model, recipe.lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    param_groups, counts = apply_training_plan(
        model,
        recipe.lr,
        weight_decay=recipe.weight_decay,
        lora=recipe.lora is not None,
        vision_feature_layer=cfg.vision.feature_layer,
    )
    log.info("trainable parameters per module:\n%s", format_plan(counts))
    flops = flop_model(
        variant.model,
        {part: c.trainable > 0 for part, c in counts.items()},
        lora=recipe.lora is not None,
        recompute=cfg.train.gradient_checkpointing,
        attn_implementation=cfg.train.attn_implementation,
    )
    return Model(variant, model, param_groups, precision, flops)


@dataclass
class Data:
    mixture: BuiltMixture
    plan: BatchPlan  # micro batch x accumulation x ranks
    stream: ShardStream  # this rank's micro-batches
    loader: StreamingLoader  # the stream in worker processes; close() it
    steps: int  # optimizer steps of the whole run

    @property
    def samples_per_epoch(self) -> int:
        return self.stream.batches_per_epoch() * self.plan.micro_batch * self.plan.world


def build_stream(run: Run, mixture: BuiltMixture, model: Model) -> Data:
    """Encoder, this rank's stream of micro-batches and its loader; the run's length in steps."""
    cfg, recipe, info = run.cfg, run.cfg.recipe, run.info
    plan = plan_batches(recipe, info.world)
    encoder = SampleEncoder(
        model.variant.processor,
        EncodeOptions(
            prompt_format=recipe.prompt_format,
            num_image_tokens=model.variant.num_image_tokens,
            max_length=recipe.max_length,
            overflow=recipe.overflow,
            pad_to_square=_pads_to_square(cfg),
            anyres=model.variant.anyres,
        ),
    )
    placeholder = encoder.image_placeholder(model.module.config.image_token_index)
    workers = resolve_workers(cfg.data.num_workers)
    log.info(
        "data loading: %d worker(s) per rank (data.num_workers=%s), each %d micro-batches ahead",
        workers,
        cfg.data.num_workers,
        cfg.data.prefetch_factor,
    )
    stream = ShardStream(
        StreamPlan(mixture, cfg.train.seed, shuffle_buffer=1000),
        encoder,
        Collator(model.variant.tokenizer.pad_token_id, placeholder, cfg.data.batching == "pack"),
        BatchingOptions(
            plan.micro_batch, cfg.data.batching, cfg.data.group_buffer, recipe.max_length
        ),
        rank=info.rank,
        world=info.world,
        workers=workers,
    )
    loader = StreamingLoader(
        stream,
        workers,
        worker_init_fn=ignore_stop_signals,
        prefetch_factor=cfg.data.prefetch_factor,
    )
    steps = total_steps(recipe, stream.batches_per_epoch() * plan.micro_batch * info.world)
    return Data(mixture, plan, stream, loader, steps)


def start_engine(run: Run, model: Model, data: Data):
    """The DeepSpeed engine (config logged and written to `deepspeed.json`)."""
    import deepspeed

    cfg, plan, precision = run.cfg, data.plan, model.precision
    ds_config = deepspeed_config(cfg.deepspeed, cfg.recipe, plan, data.steps, precision)
    log.info(
        "%d samples/epoch, %d steps, global batch %d = %d micro x %d accum x %d ranks, %s, ZeRO-%d",
        data.samples_per_epoch,
        data.steps,
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        run.info.world,
        precision,
        cfg.deepspeed.zero_stage,
    )
    if run.info.is_main:
        (run.dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2))
    optimizer = torch.optim.AdamW(model.param_groups, betas=(0.9, 0.999), eps=1e-8)
    engine, _, _, _ = deepspeed.initialize(
        model=model.module,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lr_schedule(cfg.recipe, data.steps),  # warmup from step 1 (ds_config.py)
    )
    return engine


@dataclass
class Tracking:
    tracker: Tracker | None  # W&B, on rank 0 only
    metrics: MetricsLogger  # metrics.jsonl (rank 0), mirrored to the tracker

    def close(self, exit_code: int = 0, *, preempted: bool = False) -> None:
        if self.tracker is not None:
            self.tracker.finish(exit_code=exit_code, preempted=preempted)


def open_tracking(run: Run) -> Tracking:
    tracker = None
    if run.info.is_main:
        w = run.cfg.wandb
        tracker = Tracker(
            enabled=w.enabled,
            project=w.project,
            entity=w.entity,
            group=w.group,
            name=w.name or run.dir.name,
            run_dir=run.dir,
            run_id=run.identity.wandb_id,  # the same identity as the directory and the report
            run_hash=run.identity.run_hash,
            mode=w.mode,
            config=OmegaConf.to_container(run.dcfg, resolve=True),  # type: ignore[arg-type]
            environment=_started_environment(run)["environment"],  # the same on every resume
        )
    return Tracking(tracker, MetricsLogger(run.dir, enabled=run.info.is_main, tracker=tracker))


@dataclass
class Resumed:
    state: TrainState  # where training continues (a fresh state when nothing was saved)
    from_step: int  # the step of the checkpoint it resumed from; -1: none


def resume(run: Run, engine, loader: StreamingLoader, metrics: MetricsLogger) -> Resumed:
    """Load the latest complete checkpoint, if any: engine, data position, counts, RNG."""
    state = TrainState()
    latest = checkpoint.latest_complete(run.checkpoint_dir)
    if latest is not None:
        client, rank_state = checkpoint.load(engine, latest)
        state.step, state.nonfinite = client["step"], client["nonfinite"]
        state.samples = rank_state["samples"]
        state.tokens = rank_state.get("tokens", 0)  # absent from checkpoints older than the count
        state.skipped.update(rank_state["skipped"])
        for source, (samples, tokens) in rank_state.get("truncated", {}).items():  # older: none
            state.truncated[source], state.truncated_tokens[source] = samples, tokens
        loader.load_state_dict(rank_state["data"])
        checkpoint.set_rng_state(rank_state["rng"])
        log.info("resumed from %s at step %d", latest, state.step)
    metrics.truncate_after(state.step)  # also drops lines of an attempt that never checkpointed
    return Resumed(state, int(latest.name.split("_")[1]) if latest else -1)


def rank_state(state: TrainState, loader: StreamingLoader) -> dict:
    """What this rank saves beside the engine: its counts, data position and RNG."""
    return {
        "samples": state.samples,
        "tokens": state.tokens,
        "skipped": dict(state.skipped),
        "truncated": {s: [n, state.truncated_tokens[s]] for s, n in state.truncated.items()},
        "data": loader.state_dict(),
        "rng": checkpoint.rng_state(),
    }


@dataclass
class Evaluator:
    """The training evaluation hook on the engine's module; per-class tables go to W&B."""

    hook: TrainingEvalHook
    engine: Any
    tracker: Tracker | None

    def __call__(self, step: int, final: bool = False) -> dict | None:
        results = self.hook.maybe_run(self.engine.module, step, final=final)  # every rank
        if results and self.tracker is not None:
            for name, rows in self.hook.last_per_class.items():
                self.tracker.log_table(f"eval/{name}/per_class", rows, step=step)
        return results


def open_evaluation(run: Run, model: Model, engine, tracker: Tracker | None) -> Evaluator:
    hook = TrainingEvalHook(
        run.cfg.eval,
        model.variant.processor,
        run.dir,
        pad_to_square=_pads_to_square(run.cfg),
    )
    return Evaluator(hook, engine, tracker)


def train(
    run: Run,
    data: Data,
    model: Model,
    engine,
    tracking: Tracking,
    resumed: Resumed,
    evaluate: Evaluator,
) -> tuple[TrainState, dict | None]:
    """The loop, then the final checkpoint and evaluation; returns (state, final results).

    A fault closes W&B (every rank raised the same `RunFault`: they leave the process group
    together); a stop signal checkpoints and raises `TrainingInterrupted`. The loader's
    workers are stopped either way.
    """
    cfg = run.cfg
    on_checkpoint = partial(rank_state, loader=data.loader)
    stop_flag = StopFlag()
    peak, peak_source = peak_flops(cfg.train.peak_tflops, engine.device)
    log.info("MFU and HFU against: %s", peak_source)
    opts = LoopOptions(
        total_steps=data.steps,
        log_every=cfg.train.log_every,
        save_every=cfg.train.save_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        nan_skip_limit=cfg.train.nan_skip_limit,
        max_bad_fraction=cfg.data.max_bad_fraction,
        checkpoint_dir=run.checkpoint_dir,
        stop_requested=stop_flag,
        evaluate=evaluate,
        flops=model.flops,
        peak_flops=peak,
    )
    final_eval = None
    try:
        state = train_loop(
            engine, iter(data.loader), resumed.state, opts, tracking.metrics, on_checkpoint
        )
        if not state.stopped_early:
            if state.step > resumed.from_step:
                checkpoint.save(
                    engine,
                    run.checkpoint_dir,
                    state.step,
                    state.client_state(),
                    on_checkpoint(state),
                    cfg.train.keep_checkpoints,
                )
            final_eval = agreed_evaluation(partial(evaluate, final=True), state.step)
    except BaseException as e:
        tracking.close(exit_code=1)
        if isinstance(e, RunFault):  # every rank raised this same fault: leave together
            shutdown_distributed()
        raise
    finally:
        stop_flag.restore()
        data.loader.close()  # its workers ignore SIGTERM: stop them before anything can hang
    if state.stopped_early:
        log.warning(
            "stopped at step %d of %d after a stop signal; re-run to resume", state.step, data.steps
        )
        tracking.close(exit_code=1, preempted=True)
        shutdown_distributed()  # every rank checkpointed and stops here
        raise TrainingInterrupted(f"stopped at step {state.step} of {data.steps} (signal)")
    return state, final_eval


def finish(
    run: Run,
    data: Data,
    model: Model,
    engine,
    tracking: Tracking,
    state: TrainState,
    final_eval: dict | None,
) -> None:
    """Log the final evaluation and the skips, export, close W&B and the process group."""
    if final_eval:
        tracking.metrics.log(state.step, final_eval)
    dropped = report_skips(run, data.mixture, state, tracking.tracker)
    tokens = _all_sum_int(state.tokens)  # collective: before the rank-0-only writes
    if run.cfg.train.export:
        export_engine(
            engine,
            model.variant.processor,
            run.export_dir,
            {
                "variant": {
                    k: OmegaConf.to_container(run.dcfg[k], resolve=True)
                    for k in ("arch", "vision", "llm", "projector", "data", "recipe")
                },
                "steps": state.step,
                "tokens": tokens,
                "precision": model.precision,
                "world_size": run.info.world,
                "config_hash": run.identity.config_hash,
                "command": training_command(),
                "data_dropped": dropped,  # skipped and truncated samples (the card lists them)
                "throughput": throughput(
                    state, run.info.world, run.cfg.train.peak_tflops, engine.device
                ),  # fmt: skip
                **_environment_info(run),  # the software it ran on (the card lists it)
            },
        )
        if run.info.is_main:  # the card, with the run's own final evaluation (model/card.py)
            final = run.dir / "eval" / f"step_{state.step}"
            evaluations = (
                evaluations_in(final, f"this run, step {state.step}") if final_eval else []
            )
            record_evaluations(run.export_dir, evaluations)
    tracking.close()
    shutdown_distributed()


def throughput(state: TrainState, world: int, configured_peak: float | None, device) -> dict:
    """The run's throughput over its logged windows (since the last resume), for the card:
    tokens/s, TFLOP/s per device, MFU and HFU against the peak (vision tower included)."""
    t = state.throughput
    if not t["seconds"]:
        return {}
    peak, source = peak_flops(configured_peak, device)
    return {
        "seconds": t["seconds"],
        "tokens_per_s": t["tokens"] / t["seconds"],
        **utilisation(t["model_flops"], t["hardware_flops"], t["seconds"], world, peak),
        "peak": source,
    }


def report_skips(
    run: Run, mixture: BuiltMixture, state: TrainState, tracker: Tracker | None
) -> dict:
    """Samples skipped on every rank, next to the build's skips, and samples truncated at
    recipe.max_length per source, in `data_skips.json` (returned: the model card lists them)."""
    skipped = _global_skips(state)
    truncated = _global_truncation(state)
    if tracker is not None:
        tracker.log({f"data/skipped_{k}": v for k, v in skipped.items()}, step=state.step)
        tracker.log(
            {f"data/truncated_{k}": v["samples"] for k, v in truncated.items()}, step=state.step
        )
    report = skip_report(mixture, skipped, truncated)  # run-time counts next to the build's
    if run.info.is_main:
        (run.dir / "data_skips.json").write_text(json.dumps(report, indent=2))
        if skipped or report["build"]:
            log.warning(
                "samples skipped during training, by reason: %s; at build time: %s",
                skipped,
                report["build"],
            )
        if truncated:
            log.warning(
                "samples truncated at recipe.max_length=%d (recipe.overflow=truncate), per "
                "source: %s",
                run.cfg.recipe.max_length,
                ", ".join(
                    f"{s}: {v['samples']} samples, {v['tokens_dropped']} tokens dropped"
                    for s, v in truncated.items()
                ),
            )
    return report


# --- helpers ----------------------------------------------------------------------------------


def _started_environment(run: Run) -> dict:
    """environment.json (rank 0 wrote it in claim_run_dir)."""
    record = read_run_environment(run.dir)
    assert record is not None, f"{run.dir}: environment.json was not written"
    return record


def _environment_info(run: Run) -> dict:
    """The environment the run started with and each resume's differences, for the export's
    llava_ablate.json (rank 0 reads it; every rank passes it, only rank 0 writes)."""
    record = read_run_environment(run.dir) if run.info.is_main else None
    if record is None:
        return {}
    changes = [c["changes"] for c in record.get("resumed_with_changes", [])]
    return {"environment": record["environment"], "environment_changes": changes}


def _pads_to_square(cfg: Config) -> bool:
    """LLaVA-1.5's pad-to-square (vision.image_aspect=pad); anyres keeps the aspect ratio."""
    return arch_for(cfg.arch.type).pads_to_square(cfg.vision)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def job_overrides() -> list[str] | None:
    """The overrides that compose this run's config again: Hydra's record of the job's own
    (the same under torchrun, a multirun and a Slurm array) plus its `hydra.searchpath` (a
    user's config folder); None outside a Hydra job (run_training called directly)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides
    except ValueError:
        return None
    searchpath = [o for o in overrides.hydra if o.startswith("hydra.searchpath=")]
    return [*overrides.task, *searchpath]


def training_command() -> str:
    """The command that trains this run again (outside Hydra: this process's arguments)."""
    overrides = job_overrides()
    return shlex.join(
        ["llava-ablate", "train", *(sys.argv[1:] if overrides is None else overrides)]
    )


def _all_sum_int(value: int) -> int:
    gathered: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(gathered, value)  # any backend, exact
    return sum(gathered)


def _global_truncation(state: TrainState) -> dict[str, dict[str, int]]:
    """source -> {samples, tokens_dropped}, summed over ranks."""
    mine = {s: [n, state.truncated_tokens[s]] for s, n in state.truncated.items()}
    gathered: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    total: dict[str, dict[str, int]] = {}
    for part in gathered:
        for source, (samples, tokens) in part.items():
            entry = total.setdefault(source, {"samples": 0, "tokens_dropped": 0})
            entry["samples"] += samples
            entry["tokens_dropped"] += tokens
    return dict(sorted(total.items()))


def _global_skips(state: TrainState) -> dict[str, int]:
    gathered: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, dict(state.skipped))
    total: dict[str, int] = {}
    for part in gathered:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total
