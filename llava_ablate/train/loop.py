"""The training loop: plain and visible, on a DeepSpeed engine."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from llava_ablate.base.faults import (
    BatchLoadError,
    EvaluationFailed,
    NonFiniteLoss,
    RunFault,
    TooManySkipped,
    agree,
)
from llava_ablate.model.flops import FlopModel, batch_shape, step_flops
from llava_ablate.train import checkpoint
from llava_ablate.train.loss import supervised_loss
from llava_ablate.train.metrics import MetricsLogger, peak_memory_gb

log = logging.getLogger("llava_ablate.train")

# attention_mask for one sample per row; position_ids (restarting per sample) for packed rows;
# image_sizes and batch_num_images: anyres (arch=llava_onevision) batches only.
_MODEL_KEYS = (
    "input_ids",
    "labels",
    "attention_mask",
    "position_ids",
    "pixel_values",
    "image_sizes",
    "batch_num_images",
)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples: int = 0  # samples drawn on this rank (used or skipped)
    skipped: Counter = field(default_factory=Counter)  # reason -> count, this rank
    # source -> samples cut at recipe.max_length / tokens cut off them (overflow=truncate)
    truncated: Counter = field(default_factory=Counter)
    truncated_tokens: Counter = field(default_factory=Counter)
    nonfinite: int = 0  # micro-batches skipped for a NaN/Inf loss (all ranks agree)
    tokens: int = 0  # tokens trained on by this rank (attention mask, placeholder rows excluded)
    stopped_early: bool = False  # a stop was requested (preemption): checkpointed, not finished
    # This process's throughput since it started (resumed runs: since the resume), every rank
    # summed: for the model card.
    throughput: Counter = field(default_factory=Counter)

    def client_state(self) -> dict:
        return {"step": self.step, "nonfinite": self.nonfinite}


@dataclass
class LoopOptions:
    total_steps: int
    log_every: int
    save_every: int
    keep_checkpoints: int
    nan_skip_limit: int
    max_bad_fraction: float
    checkpoint_dir: Path
    # Polled after every optimizer step (e.g. a preemption signal arrived); when any rank says
    # yes, all ranks checkpoint and return early so the job can requeue and resume.
    stop_requested: Callable[[], bool] | None = None
    # Called on every rank after each optimizer step (evaluation hook); a dict result is logged.
    evaluate: Callable[[int], dict | None] | None = None
    # The variant's FLOP shapes (model/flops.py) and one device's peak FLOP/s: each logged
    # window reports achieved TFLOP/s, and MFU and HFU where the peak is known.
    flops: FlopModel | None = None
    peak_flops: float | None = None


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _lrs(optimizer) -> dict[str, float]:
    out = {}
    for g in optimizer.param_groups:
        out.setdefault(f"lr/{g.get('name', 'group').removesuffix('_no_decay')}", g["lr"])
    return out


def train_loop(
    engine,
    batches: Iterator[dict],
    state: TrainState,
    opts: LoopOptions,
    metrics: MetricsLogger,
    on_checkpoint: Callable[[TrainState], dict],
) -> TrainState:
    device = engine.device
    world = dist.get_world_size()
    pending: deque[tuple[dict, bool]] = deque()  # this optimizer step's micro-batches
    last_good: dict | None = None
    window = Counter()  # sums over the current logging window
    t_window = time.perf_counter()
    while state.step < opts.total_steps:
        if not pending:
            # The whole step is loaded first: its loss is a mean over the supervised tokens of
            # the global batch (every rank's micro-batches), so their count is needed before the
            # first backward. Each micro-batch's loss is its token-loss sum / (that count /
            # (world x accumulation steps)); DeepSpeed divides by the accumulation steps and
            # averages over ranks, so the step's gradient is the global mean whatever the split
            # of tokens between micro-batches (packed or grouped). After a skipped non-finite
            # micro-batch only the rest of its step is loaded (and counted).
            gas = engine.gradient_accumulation_steps()
            for _ in range(gas - engine.micro_steps % gas):
                batch, empty = _next_batch(batches, state, opts, window, last_good)
                last_good = batch
                pending.append((batch, empty))
            local = sum(_targets(b) for b, empty in pending if not empty)
            (step_targets,) = _all_sum([local], device)
            num_items = torch.tensor(max(step_targets, 1.0) / (world * gas), device=device)
        batch, empty = pending.popleft()
        inputs = {k: batch[k].to(device) for k in _MODEL_KEYS if k in batch}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(engine.module.dtype)
        # The LM head runs only where a label is supervised (train/loss.py).
        loss = supervised_loss(engine, inputs, num_items)
        if empty:
            loss = loss * 0.0

        # Every rank skips the same micro-batch, keeping DeepSpeed's collectives in step.
        if _any_rank(not bool(torch.isfinite(loss)), device):
            state.nonfinite += 1
            if state.nonfinite > opts.nan_skip_limit:
                ids = _gather(batch["ids"][:4])  # every rank names every rank's micro-batch
                raise NonFiniteLoss(
                    f"non-finite loss at step {state.step} (micro-batch ids per rank {ids});"
                    f" {state.nonfinite} so far, train.nan_skip_limit={opts.nan_skip_limit}. "
                    "Lower the lr, check the data, or raise the limit to skip such batches."
                )
            log.warning("non-finite loss at step %d: micro-batch skipped", state.step)
            continue

        boundary = engine.is_gradient_accumulation_boundary()
        if boundary:
            lrs = _lrs(engine.optimizer)  # the rates this optimizer step uses
        engine.backward(loss)
        engine.step()
        if not empty:
            window["loss_sum"] += loss.item() * float(num_items)  # this batch's token-loss sum
            window["targets"] += _targets(batch)
            window["tokens"] += batch["real_tokens"]  # the placeholder row is not data
            state.tokens += batch["real_tokens"]  # tokens seen, for the model card
            window["samples"] += len(batch["ids"])
            if opts.flops is not None:
                model_flops, hardware_flops = step_flops(opts.flops, batch_shape(batch, opts.flops))
                window["model_flops"] += model_flops
                window["hardware_flops"] += hardware_flops
        if not boundary:
            continue
        state.step += 1
        window["steps"] += 1
        if state.step % opts.log_every == 0 or state.step == opts.total_steps:
            log_window(engine, metrics, state, window, t_window, lrs, opts.peak_flops)
            window.clear()
            t_window = time.perf_counter()
        if opts.evaluate is not None and state.step < opts.total_steps:
            results = agreed_evaluation(
                opts.evaluate, state.step
            )  # collective: every rank calls it
            if results:
                metrics.log(state.step, results)
        if state.step >= opts.total_steps:
            break  # the final checkpoint and export are the caller's
        stop = opts.stop_requested is not None and _any_rank(opts.stop_requested(), device)
        if stop or (opts.save_every and state.step % opts.save_every == 0):
            checkpoint.save(
                engine,
                opts.checkpoint_dir,
                state.step,
                state.client_state(),
                on_checkpoint(state),
                opts.keep_checkpoints,
            )
        if stop:
            log.warning("stop requested at step %d: checkpointed, exiting", state.step)
            state.stopped_early = True
            return state
    return state


def log_window(
    engine,
    metrics: MetricsLogger,
    state: TrainState,
    window: Counter,
    started: float,
    lrs: dict[str, float],
    peak_flops: float | None = None,
) -> None:
    """One metrics line for the optimizer steps since `started`: `window` holds this rank's
    sums (token losses, supervised tokens, tokens, samples, data wait, FLOPs); collective,
    summed over ranks."""
    elapsed = time.perf_counter() - started
    loss_sum, targets, tokens, samples, wait, skipped, model_flops, hardware_flops = _all_sum(
        [
            window["loss_sum"],
            window["targets"],
            window["tokens"],
            window["samples"],
            window["data_wait_s"],
            sum(state.skipped.values()),
            window["model_flops"],
            window["hardware_flops"],
        ],
        engine.device,
    )
    world = dist.get_world_size()
    grad_norm = engine.get_global_grad_norm()
    state.throughput.update(seconds=elapsed, tokens=tokens, model_flops=model_flops,
                            hardware_flops=hardware_flops)  # fmt: skip
    metrics.log(
        state.step,
        {
            "loss": loss_sum / max(targets, 1),  # mean over the window's supervised tokens
            **lrs,
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            "tokens_per_s": tokens / elapsed,
            "supervised_tokens_per_s": targets / elapsed,  # what the loss is computed on
            "samples_per_s": samples / elapsed,
            "data_wait_frac": wait / world / elapsed,
            "peak_mem_gb": peak_memory_gb(),
            "skipped_total": int(skipped),
            **utilisation(model_flops, hardware_flops, elapsed, world, peak_flops),
        },
    )


def utilisation(model_flops: float, hardware_flops: float, seconds: float, world: int,
                peak_flops: float | None) -> dict[str, float]:  # fmt: skip
    """Achieved TFLOP/s per device (model FLOPs: model/flops.py) and, against the peak, MFU
    (model FLOPs) and HFU (hardware FLOPs: padding and recompute included)."""
    if not model_flops or seconds <= 0:
        return {}
    out = {"tflops_per_device": model_flops / seconds / world / 1e12}
    if peak_flops:
        out["mfu"] = model_flops / seconds / (world * peak_flops)
        out["hfu"] = hardware_flops / seconds / (world * peak_flops)
    return out


def _next_batch(
    batches: Iterator[dict],
    state: TrainState,
    opts: LoopOptions,
    window: Counter,
    last_good: dict | None,
) -> tuple[dict, bool]:
    """The next micro-batch and whether it is empty (every sample skipped: `last_good` stands in,
    its loss zeroed, so this rank still joins the collectives). Counts samples and skips."""
    t0 = time.perf_counter()
    # Everything a single rank can fail on before the forward is settled here, together:
    # the forward (ZeRO-3) and backward are collectives a failed rank would never join.
    error: Exception | None = None
    try:
        batch = next(batches)  # endless: the loader moves on to the next epoch itself
    except Exception as e:  # noqa: BLE001 - agreed below, then raised on every rank
        batch, error = None, e
    window["data_wait_s"] += time.perf_counter() - t0
    empty = batch is not None and "input_ids" not in batch
    if batch is not None:
        # A packed micro-batch holds micro_batch samples only on average over its window.
        state.samples += len(batch["ids"]) + len(batch["skip_details"])
        for skip in batch["skip_details"]:
            if state.skipped[skip.reason] < 3:  # name the first few of each kind
                log.warning("skipped sample %s (%s) %s", skip.id, skip.reason, skip.detail)
            state.skipped[skip.reason] += 1
        for source, (samples, tokens) in batch.get("truncated", {}).items():
            if not state.truncated[source]:
                log.warning(
                    "source %s: samples longer than recipe.max_length are truncated "
                    "(recipe.overflow=truncate); counted in data_skips.json",
                    source,
                )
            state.truncated[source] += samples
            state.truncated_tokens[source] += tokens
        error = _skip_fault(state, opts.max_bad_fraction)
        if error is None and empty and last_good is None:
            error = TooManySkipped(
                f"the first micro-batch was entirely skipped: {batch['skipped']}"
            )
    agree(error, BatchLoadError, f"could not load a micro-batch at step {state.step}")
    assert batch is not None
    if empty:
        assert last_good is not None
        return last_good, True
    return batch, False


def _targets(batch: dict) -> int:
    """Supervised tokens: the labels the causal-LM loss predicts (it shifts them by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def _any_rank(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return t.item() > 0


def _gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def agreed_evaluation(evaluate: Callable[[int], dict | None], step: int) -> dict | None:
    """Run the evaluation hook; an error on any rank ends every rank. The hook agrees before
    each of its own collectives; an error it raised already agreed passes straight through."""
    error: Exception | None = None
    results = None
    try:
        results = evaluate(step)
    except RunFault:
        raise
    except Exception as e:  # noqa: BLE001 - agreed below, then raised on every rank
        error = e
    agree(error, EvaluationFailed, f"failed in the evaluation at step {step}")
    return results


def _skip_fault(state: TrainState, max_fraction: float) -> TooManySkipped | None:
    skipped = sum(state.skipped.values())
    # Judge the fraction only once enough samples were seen for it to mean something.
    if skipped and state.samples >= 50 and skipped / state.samples > max_fraction:
        return TooManySkipped(
            f"{skipped} of {state.samples} samples skipped "
            f"({dict(state.skipped)}), above data.max_bad_fraction={max_fraction}; "
            "fix the data (see the reasons) or raise the limit"
        )
    return None
