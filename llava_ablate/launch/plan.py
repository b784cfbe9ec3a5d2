"""`--dry-run` / `llava-ablate plan <grid>`: every job of a grid with its resources, the steps
and tokens it will train on, its GPU memory per rank and its GPU-hours -- before submitting."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from omegaconf import DictConfig

from llava_ablate.config import Config, ConfigError, to_object
from llava_ablate.launch.buildtime import BuildEstimate, build_estimate, build_lines
from llava_ablate.launch.estimate import (
    DataSize,
    Memory,
    ModelSize,
    config_memory,
    data_size,
    fmt_bytes,
    fmt_count,
    gpu_spec,
    model_size,
    train_flops,
)
from llava_ablate.launch.grid import GridSpec, Job, expand
from llava_ablate.launch.planning import (
    Resources,
    compose_with_launcher,
    job_status,
    resources,
    text_table,
)
from llava_ablate.launch.requests import Request, request_line, training_request
from llava_ablate.run_identity import RunConfigMismatch, check_run_identity


@dataclass
class PlanRow:
    job: Job
    status: str  # finished | resume@<step> | new
    resources: Resources
    steps: int | None
    micro_batch: int
    grad_accum: int
    data: DataSize
    tokens: float | None
    size: ModelSize
    memory: Memory  # every sample of a micro-batch at the longest length
    gpu_hours: float | None
    gpu_mem_gib: float  # the assumed GPU's memory, 0 on CPU
    memory_typical: Memory | None = None  # at the mean length (batches group similar lengths)
    typical_len: int | None = None
    max_len: int = 0
    request: Request | None = None  # what Slurm is asked for (launch/requests.py)
    build: BuildEstimate | None = None  # converting its mixture's sources to shards

    def _fits(self, memory: Memory | None) -> bool:
        return memory is None or not self.gpu_mem_gib or memory.total / 2**30 <= self.gpu_mem_gib

    @property
    def fits(self) -> bool:
        return self._fits(self.memory)

    @property
    def fits_typical(self) -> bool:
        return self._fits(self.memory_typical)

    @property
    def mark(self) -> str:
        """'~' for numbers estimated before the build, '>=' when some sources are unsized."""
        return ">=" if self.data.lower_bound else "~" if self.data.estimated else ""


def compose_job(job: Job, grid: GridSpec, extra: list[str]) -> tuple[Config, DictConfig]:
    """The job's config exactly as train.py will compose it, and the Hydra launcher node."""
    dcfg, launcher = _compose(job, grid, extra)
    return to_object(dcfg), launcher


def _compose(job: Job, grid: GridSpec, extra: list[str]) -> tuple[DictConfig, DictConfig]:
    """compose_job's config as the DictConfig train.py hashes (run_identity.result_config)."""
    overrides = [*job.all_overrides(len(grid.stages) == 1), *grid.launcher, *extra]
    return compose_with_launcher(
        overrides, "config", f"grid {grid.name}, job {job.stage}/{job.name}"
    )


def check_identities(grid: GridSpec, jobs: list[Job], extra: list[str]) -> None:
    """Before anything is submitted: every job whose run directory already holds a run must
    compose (with `extra`) to the config recorded there -- the same check, with the same
    `train.allow_config_change` escape, that train.py makes at start-up, but for all jobs at
    once and before Slurm queues them. Sets `job.identity`, which `Job.finished` requires.
    RunConfigMismatch naming every differing job and key otherwise."""
    refused: list[tuple[Job, RunConfigMismatch]] = []
    for job in jobs:
        if job.identity is not None or not job.run_dir.is_dir():
            continue  # checked already, or nothing there to be finished or resumed
        dcfg, launcher = _compose(job, grid, extra)
        try:
            job.identity = check_run_identity(
                dcfg, job.run_dir, world_size=resources(launcher).world
            )
        except RunConfigMismatch as e:
            refused.append((job, e))
    if not refused:
        return
    keys = list(dict.fromkeys(k for _, e in refused for k in e.refused))
    raise RunConfigMismatch(
        f"grid {grid.name}: {len(refused)} of {len(jobs)} jobs already hold runs of another "
        "result-affecting config (the grid's common or stage overrides, or the command line's, "
        "changed since they ran); nothing was submitted.\n"
        + "\n".join(f"job {job.stage}/{job.name}: {e.what}" for job, e in refused)
        + "\nTo start separate runs, rename the grid (its name names the run directories) or "
        "pass another --runs-root.\nTo continue these runs after a deliberate change, add "
        f"train.allow_config_change=[{','.join(keys)}] to the launch command"
    )


def plan_job(job: Job, grid: GridSpec, extra: list[str]) -> PlanRow:
    from llava_ablate.train.ds_config import plan_batches, total_steps

    cfg, launcher = compose_job(job, grid, extra)
    res = resources(launcher)
    peak_flops, gpu_mem = gpu_spec(grid.gpu)
    on_gpu = grid.gpu != "cpu"
    try:
        batches = plan_batches(cfg.recipe, res.world)
    except ConfigError as e:
        raise ConfigError(f"grid {grid.name}, job {job.name}: {e}") from e
    size = model_size(cfg)
    data = data_size(cfg, size.image_tokens, size.anyres)
    if cfg.recipe.max_steps:
        steps: int | None = cfg.recipe.max_steps
    elif data.samples is not None:
        steps = total_steps(cfg.recipe, data.samples)
    else:
        steps = None
    samples = steps * cfg.recipe.global_batch_size if steps is not None else None
    tokens = samples * data.tokens_per_sample if samples and data.tokens_per_sample else None
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"

    def memory_at(seq_len: int) -> Memory:
        return config_memory(cfg, size, data, res.world, precision, on_gpu, seq_len)

    max_len = data.longest or cfg.recipe.max_length
    # Batches group samples of similar length (data.batching), so most micro-batches are near
    # the mean; the longest sets the peak. Both are shown: a plan that only says "will not fit"
    # at max length hides that the typical step fits with room to spare.
    typical_len = round(data.tokens_per_sample) if data.tokens_per_sample else None
    if cfg.data.batching == "pack":  # packed rows are filled up to the maximum length
        typical_len = None
    gpu_hours = None
    if on_gpu and samples and data.tokens_per_sample is not None:
        flops = train_flops(
            size,
            samples,
            data.tokens_per_sample,
            data.images_per_sample or 0.0,
            cfg.train.gradient_checkpointing,
            data.vision_tokens,
        )
        gpu_hours = flops / (peak_flops * grid.mfu) / 3600
    explicit = [*grid.launcher, *extra, *job.overrides]  # what the user set wins
    job.request = training_request(gpu_hours, res.gpus, res.timeout_min, explicit)
    return PlanRow(
        job,
        job_status(job),
        res,
        steps,
        batches.micro_batch,
        batches.grad_accum,
        data,
        tokens,
        size,
        memory_at(max_len),
        gpu_hours,
        gpu_mem,
        memory_at(typical_len) if typical_len and typical_len < max_len else None,
        typical_len,
        max_len,
        job.request,
        build_estimate(cfg.data),
    )


def plan_grid(grid: GridSpec, extra: list[str] | None = None) -> list[PlanRow]:
    jobs = expand(grid)
    check_identities(grid, jobs, list(extra or []))  # a changed grid is refused, not planned
    return [plan_job(job, grid, list(extra or [])) for job in jobs]


def format_plan(grid: GridSpec, rows: list[PlanRow]) -> str:
    todo = [r for r in rows if r.status != "finished"]
    first = rows[0].resources if rows else None
    out = [
        f"grid {grid.name}: {len(rows)} jobs, {len(todo)} to run, "
        f"{len(rows) - len(todo)} finished"
        + (f" -- {grid.description}" if grid.description else ""),
        f"launcher {first.launcher if first else '-'}, assumed GPU {grid.gpu}"
        + (f", MFU {grid.mfu:.0%}" if grid.gpu != "cpu" else ""),
        "",
    ]
    index = {id(r.job): i + 1 for i, r in enumerate(rows)}
    table = []
    for i, r in enumerate(rows, 1):
        res = r.resources
        alloc = f"{res.nodes}x{res.tasks_per_node}" + (
            f" ({res.gpus} GPU)" if res.gpus_per_node else " (CPU)"
        )
        table.append(
            [
                str(i),
                r.job.stage,
                r.job.name,
                r.status,
                f"#{index[id(r.job.parent)]}" if r.job.parent else "-",
                alloc,
                r.request.cell() if r.request else f"{res.timeout_min}m",
                "?" if r.steps is None else f"{r.mark}{r.steps:,}",
                f"{r.micro_batch}x{r.grad_accum}x{res.world}",
                "?" if r.tokens is None else r.mark + fmt_count(r.tokens),
                f"{fmt_count(r.size.params)}/{fmt_count(r.size.trainable_params)}",
                _memory_cell(r),
                "-" if r.gpu_hours is None else f"{r.mark}{r.gpu_hours:,.1f}",
            ]
        )
    out.append(
        text_table(
            [
                "#",
                "stage",
                "job",
                "status",
                "after",
                "nodes x tasks",
                "time",
                "steps",
                "micro x accum x ranks",
                "tokens",
                "params/trained",
                "mem/rank typical|max",
                "GPU-h",
            ],
            table,
        )
    )
    out += [request_line(grid.gpu), "", _memory_lines(rows)]
    for i, r in enumerate(rows, 1):
        if r.size.anyres is not None:
            typical = (
                f"{r.data.image_tokens:,.0f} (tower {r.data.vision_tokens:,.0f}) at the mean "
                "image size"
                if r.data.image_tokens is not None
                else "typical unknown until the data is built"
            )
            out.append(
                f"  #{i} anyres image tokens per image: up to {r.size.image_tokens:,} "
                f"(tower {r.size.vision_tokens:,}, the largest grid); {typical}"
            )
    out += _data_lines(rows)
    builds = {r.build.mixture: (r.build, not r.data.estimated) for r in rows if r.build}
    out += build_lines(builds)
    hours = [r for r in todo if r.gpu_hours is not None]
    if grid.gpu != "cpu":
        total = sum(r.gpu_hours for r in hours)
        mark = ">=" if any(r.data.lower_bound for r in hours) or len(hours) < len(todo) else (
            "~" if any(r.data.estimated for r in hours) else "")  # fmt: skip
        line = f"GPU-hours to run: {mark}{total:,.1f}" if hours else "GPU-hours to run: unknown"
        missing = len(todo) - len(hours)
        if hours and missing:
            line += f" ({missing} jobs unknown)"
        estimated = sum(r.data.estimated for r in hours)
        if estimated:
            line += (f"; {estimated} of {len(hours)} jobs estimated before the build from "
                     "declared sizes (~ estimate, >= lower bound)")  # fmt: skip
        out.append(line)
    first_rows = [r for r in rows if r.resources.partition or r.resources.account]
    if first_rows:
        res = first_rows[0].resources
        out.append(f"partition={res.partition} account={res.account} qos={res.qos}")
    return "\n".join(out)


def _memory_cell(r: PlanRow) -> str:
    """`typical | max`, each with ' !' when it exceeds the assumed GPU's memory."""
    peak = fmt_bytes(r.memory.total) + ("" if r.fits else " !")
    if r.memory_typical is None:
        return peak
    return fmt_bytes(r.memory_typical.total) + ("" if r.fits_typical else " !") + " | " + peak


def _memory_lines(rows: list[PlanRow]) -> str:
    out = [
        "memory per rank (weights + gradients + optimizer + activations + overhead) at the typical "
        "(mean) sample length and at the longest (the manifests' longest sample, else "
        "recipe.max_length); batches group similar lengths, so most steps are near the typical; "
        "activations count logits at the supervised tokens only (at most a sample's text):"
    ]
    for i, r in enumerate(rows, 1):
        for label, m, n, ok in (("typical", r.memory_typical, r.typical_len, r.fits_typical),
                                ("max", r.memory, r.max_len, r.fits)):  # fmt: skip
            if m is None:
                continue
            terms = (m.weights, m.gradients, m.optimizer, m.activations, m.overhead)
            parts = " + ".join(fmt_bytes(x) for x in terms)
            cap = f" > {r.gpu_mem_gib:.0f} GiB: will not fit" if not ok else ""
            est = "~" if label == "typical" and r.data.estimated else ""
            out.append(
                f"  #{i} {label:<7} {est}{n:>6,} tokens: {parts} = {fmt_bytes(m.total)}{cap}"
            )
        if r.fits_typical and not r.fits:
            out.append(f"  #{i} fits at the typical length; a micro-batch of {r.max_len:,}-token "
                       "samples would not (lower recipe.micro_batch_size or recipe.max_length, "
                       "or use ZeRO-3 / offload)")  # fmt: skip
    return "\n".join(out)


def _data_lines(rows: list[PlanRow]) -> list[str]:
    """Where each job's data numbers come from: built manifests, or an estimate (and what the
    estimate leaves out), or nothing -- and the jobs whose mixture lists unreleased sources."""
    by_source: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows, 1):
        key = (r.data.source, tuple(r.data.notes))
        by_source.setdefault(key, []).append(i)
    out = ["data (~ estimated before the build from data.sizes in the mixture's YAML; >= lower "
           "bound; build the shards for exact numbers):"]  # fmt: skip
    for (source, notes), jobs in by_source.items():
        names = ",".join(f"#{i}" for i in jobs)
        out.append(f"  {names}: {source}")
        out += [f"      {note}" for note in notes]
    for i, r in enumerate(rows, 1):
        if r.data.unreleased:
            out.append(f"  ! #{i} {r.job.name}: its mixture has unreleased sources "
                       f"({', '.join(r.data.unreleased)})")  # fmt: skip
    return out


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "grid",
        help="a grid in launch/ (e.g. llm_x_data), one on hydra.searchpath, or a YAML file",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    parser.add_argument("--runs-root", default=None, help="where run directories go (runs)")
    parser.add_argument("--gpu", default=None, help="GPU to size for (a100-80gb, h100-80gb...)")
