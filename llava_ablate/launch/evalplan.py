"""The plan of an evaluation grid (or a training grid's evaluation stage), before submitting:
per job its status, resources, questions, tokens and GPU-hours.

- Questions: from the frozen question file when it exists, else from the dataset on disk (after
  `per_class`/`total` sub-sampling), times the cyclic rotations; `?` when neither is here.
- Tokens per question: the image's placeholder tokens plus the prompt's text (~4 characters a
  token: the question, 26 lettered options with the dataset's class names, the instruction),
  once per scorer (`name_likelihood` adds every option name, `generate` its new tokens).
  CLIP/SigLIP: the image's patches only (each class's text embedding is computed once).
- The protocol arm (eval=protocol): every distinct arm of the sweep (eval/protocol.py) on at
  most `eval.protocol.max_questions` questions, each with its own prompt: k options, all
  classes (every class name after the open prompt), rotations, open answers (new tokens).
- GPU-hours: 2 x parameters FLOPs per token (a forward pass) at the grid's assumed MFU.
It is an estimate of scale ("an hour or a week"), not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from llava_ablate.eval_config import validate_evaluate
from llava_ablate.launch.estimate import fmt_count, gpu_spec
from llava_ablate.launch.evalgrid import EvalJob
from llava_ablate.launch.grid import PROTOCOL_ARM
from llava_ablate.launch.planning import (
    Resources,
    compose_with_launcher,
    job_status,
    resources,
    text_table,
)
from llava_ablate.launch.requests import Request, evaluation_request, request_line
from llava_ablate.launch.units import make_eval_units

CHARS_PER_TOKEN = 4
DEFAULT_NAME_CHARS = 12  # an unknown dataset's mean class-name length

# The public models of launch/paper_models.yaml, so a plan needs no hub access: parameters and
# image tokens per image (LLaVA-1.5: 24x24 patches; OneVision anyres_max_9 at 384 px and
# LLaVA-NeXT at 336 px: the base image + a 2x2 grid of tiles for a typical photo;
# CLIP/SigLIP: the tower's patches). Qwen2/2.5-VL and InternVL3 (dynamic resolution) are
# counted at the dataset's image sizes by their image processors (KNOWN_DYNAMIC); their number
# here is only a fallback.
KNOWN_EVAL_MODELS: dict[str, tuple[float, int]] = {
    "llava-hf/llava-1.5-7b-hf": (7.06e9, 576),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": (8.03e9, 5 * 729),
    "llava-hf/llava-v1.6-mistral-7b-hf": (7.57e9, 5 * 576),  # anyres: base + 2x2 tiles
    "Qwen/Qwen2-VL-7B-Instruct": (8.29e9, 256),
    "Qwen/Qwen2.5-VL-7B-Instruct": (8.29e9, 256),
    "OpenGVLab/InternVL3-8B-hf": (7.94e9, 7 * 256),
    "openai/clip-vit-large-patch14-336": (4.28e8, 577),
    "google/siglip-so400m-patch14-384": (8.78e8, 729),
    "google/siglip2-so400m-patch14-384": (1.14e9, 729),
}


@dataclass(frozen=True)
class DynamicImages:
    """A dynamic-resolution model's image processor as published: the plan asks its own
    arithmetic (through the family's adapter) how many tokens the dataset's images become."""

    model_type: str
    image_processor: str  # a transformers image processor class (PIL: no torchvision needed)
    kwargs: tuple = ()  # its published settings, where they differ from the class's defaults
    per_tile: int = 0  # tiled families: image tokens per tile

    def tokens(self, height: int, width: int) -> int:
        import transformers

        from llava_ablate.eval.families import family_for

        processor = getattr(transformers, self.image_processor)(**dict(self.kwargs))
        return family_for(self.model_type).image_tokens(processor, height, width, self.per_tile)


KNOWN_DYNAMIC: dict[str, DynamicImages] = {
    "Qwen/Qwen2-VL-7B-Instruct": DynamicImages("qwen2_vl", "Qwen2VLImageProcessorPil"),
    "Qwen/Qwen2.5-VL-7B-Instruct": DynamicImages("qwen2_5_vl", "Qwen2VLImageProcessorPil"),
    "OpenGVLab/InternVL3-8B-hf": DynamicImages(
        "internvl",
        "GotOcr2ImageProcessorPil",
        (
            ("size", {"height": 448, "width": 448}),
            ("crop_to_patches", True),
            ("min_patches", 1),
            ("max_patches", 12),
        ),
        per_tile=256,
    ),  # fmt: skip
}
# The image size a plan assumes where the dataset's files are not here: ImageNet's commonest.
TYPICAL_IMAGE = (375, 500)  # height, width
SIZE_SAMPLE = 64  # images whose sizes a plan reads when the dataset is here

# Published sizes of the evaluation splits the layouts read (conf/eval/datasets/), for a plan
# made where the data is not: shown with "~". Caltech-101 without BACKGROUND_Google.
KNOWN_SPLIT_SIZES: dict[str, int] = {
    "imagenet": 50_000, "imagenetv2": 10_000, "objectnet": 50_000, "caltech101": 8_677,
    "cub200": 5_794, "food101": 25_250, "flowers102": 6_149, "stanford_cars": 8_041,
}  # fmt: skip


# Classes per dataset (the protocol's all-classes arm scores every class name), for a plan made
# where the data is not.
KNOWN_CLASS_COUNTS: dict[str, int] = {
    "imagenet": 1000, "imagenetv2": 1000, "objectnet": 113, "caltech101": 101, "cub200": 200,
    "food101": 101, "flowers102": 102, "stanford_cars": 196, "flickr_sportlogos10": 10,
}  # fmt: skip


@dataclass
class ModelScale:
    params: float | None
    image_tokens: int | None
    source: str  # where the numbers come from
    dynamic: DynamicImages | None = None  # image tokens depend on the image's size


@dataclass
class EvalPlanRow:
    job: EvalJob
    status: str  # finished | resume (n done) | new
    resources: Resources
    questions: int | None  # scoring units: questions x rotations
    questions_known: bool  # False: from KNOWN_SPLIT_SIZES, not from this machine's files
    tokens: float | None
    scale: ModelScale
    gpu_hours: float | None
    request: Request | None = None  # what Slurm is asked for (launch/requests.py)


def model_scale(path: str, model_type: str) -> ModelScale:
    """Parameters and image tokens of a model: the known table, else its local config.json
    (a model built on the meta device), else unknown."""
    if path in KNOWN_EVAL_MODELS:
        params, tokens = KNOWN_EVAL_MODELS[path]
        return ModelScale(params, tokens, "known", KNOWN_DYNAMIC.get(path))
    if not (Path(path) / "config.json").exists():
        return ModelScale(None, None, f"no config.json at {path} (yet)")
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        if model_type == "mllm":
            model = AutoModelForImageTextToText.from_config(config)
        else:
            model = AutoModel.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    tokens = getattr(config, "image_seq_length", None)
    if tokens is None:
        vision = getattr(config, "vision_config", config)
        tokens = (vision.image_size // vision.patch_size) ** 2
    return ModelScale(float(params), int(tokens), "config.json")


def image_tokens_at(scale: ModelScale, sizes: list[tuple[int, int]]) -> int | None:
    """Mean image tokens per image over `sizes` (height, width) for a dynamic-resolution model,
    else the model's fixed count."""
    if scale.dynamic is None:
        return scale.image_tokens
    return round(sum(scale.dynamic.tokens(h, w) for h, w in sizes) / len(sizes))


def _image_sizes(job: EvalJob, cfg) -> list[tuple[int, int]]:
    """(height, width) of up to SIZE_SAMPLE of the dataset's images, else
    [TYPICAL_IMAGE]."""
    from llava_ablate.eval.layouts import load_dataset

    dcfg = cfg.eval.datasets[job.dataset]
    if not Path(dcfg.root).exists() or dcfg.builtin:
        return [TYPICAL_IMAGE]
    try:
        dataset = load_dataset(job.dataset, dcfg, cfg.eval.questions.seed)
        sizes = []
        for sample in dataset.samples[:SIZE_SAMPLE]:
            image = dataset.load_image(sample)
            sizes.append((image.height, image.width))
    except (ValueError, OSError, AttributeError, TypeError):  # evaluate.py will name it
        return [TYPICAL_IMAGE]
    return sizes or [TYPICAL_IMAGE]


def _count_units(job: EvalJob, cfg) -> tuple[int | None, float]:
    """(scoring units of the job's dataset, mean class-name characters) -- from the frozen
    question file, else the dataset on disk, else (None, default)."""
    from llava_ablate.eval.layouts import load_dataset
    from llava_ablate.eval.questions import QuestionSet, question_set_path

    dcfg = cfg.eval.datasets[job.dataset]
    qcfg = cfg.eval.questions
    rotations = max(1, cfg.eval.scoring.cyclic_permutations)
    sub = {"per_class": dcfg.per_class, "total": dcfg.total}
    frozen = question_set_path(Path(qcfg.dir), job.dataset, qcfg, sub)
    if frozen.exists():
        qs = QuestionSet.load(frozen)
        names = {q.label for q in qs.questions}
        chars = sum(map(len, names)) / max(len(names), 1)
        return len(qs.questions) * rotations, chars
    if not Path(dcfg.root).exists() or dcfg.builtin:
        return None, DEFAULT_NAME_CHARS
    try:
        dataset = load_dataset(job.dataset, dcfg, qcfg.seed)
    except (ValueError, OSError):  # a layout error: evaluate.py will name it
        return None, DEFAULT_NAME_CHARS
    chars = sum(map(len, dataset.classnames)) / max(len(dataset.classnames), 1)
    return len(dataset.samples) * rotations, chars


def tokens_per_unit(cfg, scale: ModelScale, name_chars: float, model_type: str) -> float | None:
    if scale.image_tokens is None:
        return None
    if model_type != "mllm":
        return float(scale.image_tokens)
    qcfg, sc = cfg.eval.questions, cfg.eval.scoring
    k = qcfg.num_options
    text = (len(qcfg.question) + len(qcfg.instruction) + k * (name_chars + 4)) / CHARS_PER_TOKEN
    prompt = scale.image_tokens + text
    per_scorer = {
        "likelihood": prompt,
        "name_likelihood": prompt + k * name_chars / CHARS_PER_TOKEN,
        "generate": prompt + sc.max_new_tokens,
    }
    return float(sum(per_scorer[s] for s in sc.scorers))


def _class_count(job: EvalJob, cfg) -> int:
    """Classes of the job's dataset: on disk, else KNOWN_CLASS_COUNTS, else the option count."""
    from llava_ablate.eval.layouts import load_dataset

    dcfg = cfg.eval.datasets[job.dataset]
    if Path(dcfg.root).exists() and not dcfg.builtin:
        try:
            return len(load_dataset(job.dataset, dcfg, cfg.eval.questions.seed).classnames)
        except (ValueError, OSError):  # a layout error: evaluate.py will name it
            pass
    return KNOWN_CLASS_COUNTS.get(job.dataset, cfg.eval.questions.num_options)


def protocol_cost(
    cfg, questions: int, classes: int, scale: ModelScale, name_chars: float
) -> tuple[int, float | None]:
    """(scoring units, tokens) of the protocol sweep over `questions` questions: each distinct
    arm's units times its own prompt's tokens (eval/protocol.py planned_arms)."""
    from llava_ablate.eval.protocol import planned_arms
    from llava_ablate.eval.protocol_run import model_scorers

    mllm = cfg.model.type == "mllm"
    arms = planned_arms(cfg.eval, questions, classes, model_scorers(cfg.model.type))
    units = sum(n for _, n in arms)
    if scale.image_tokens is None:
        return units, None
    sc = cfg.eval.scoring
    open_prompt = scale.image_tokens + len(sc.open_prompt) / CHARS_PER_TOKEN if mllm else 0
    tokens = 0.0
    for arm, n in arms:
        if not mllm:
            per = float(scale.image_tokens)
        elif arm.scorers == ["all_classes"]:  # every class name on the prompt's cache
            per = open_prompt + classes * name_chars / CHARS_PER_TOKEN
        elif arm.scorers == ["open"]:
            per = open_prompt + sc.max_new_tokens
        else:
            asked = replace(cfg.eval, questions=replace(arm.ecfg.questions,
                                                        num_options=arm.qset.num_options),
                            scoring=replace(sc, scorers=arm.scorers))  # fmt: skip
            per = tokens_per_unit(replace(cfg, eval=asked), scale, name_chars, "mllm")
        tokens += n * per
    return units, tokens


def plan_eval_jobs(
    jobs: list[EvalJob],
    launcher: list[str],
    extra: list[str],
    gpu: str,
    mfu: float,
    parent_scale: dict[int, ModelScale] | None = None,
) -> list[EvalPlanRow]:
    """A row per job. `parent_scale`: id(training job) -> the size its plan computed, for
    exports that do not exist yet."""
    peak, gpu_mem = gpu_spec(gpu)
    rows = []
    composed: dict[tuple, tuple] = {}
    for job in jobs:
        key = (job.stage, job.model, job.distractors, id(job.parent))
        if key not in composed:
            same = [
                j.dataset for j in jobs if (j.stage, j.model, j.distractors, id(j.parent)) == key
            ]
            overrides = [*job.base_overrides(), f"eval/datasets=[{','.join(same)}]", *launcher,
                         *extra]  # fmt: skip
            where = f"evaluation {job.stage}/{job.model}"
            dcfg, launcher_node = compose_with_launcher(overrides, "evaluate", where)
            validate_evaluate(dcfg)  # a bad key or value fails the plan, naming it
            cfg = OmegaConf.to_object(dcfg)
            m = cfg.model
            if job.parent is not None and not (Path(m.path) / "config.json").exists():
                scale = (parent_scale or {}).get(id(job.parent)) or ModelScale(None, None, "?")
            else:
                scale = model_scale(m.path, m.type)
            composed[key] = (cfg, resources(launcher_node), scale, [*launcher, *extra])
        cfg, res, scale, explicit = composed[key]
        units, chars = _count_units(job, cfg)
        known = units is not None
        dcfg = cfg.eval.datasets[job.dataset]
        if (
            units is None
            and job.dataset in KNOWN_SPLIT_SIZES
            and not (dcfg.per_class or dcfg.total)
        ):
            units = KNOWN_SPLIT_SIZES[job.dataset] * max(1, cfg.eval.scoring.cyclic_permutations)
        if scale.dynamic is not None:  # at this dataset's image sizes
            scale = replace(scale, image_tokens=image_tokens_at(scale, _image_sizes(job, cfg)))
        per = tokens_per_unit(cfg, scale, chars, cfg.model.type)
        tokens = units * per if units is not None and per is not None else None
        if cfg.eval.protocol.enabled and units is not None:
            rotations = max(1, cfg.eval.scoring.cyclic_permutations)
            units, tokens = protocol_cost(cfg, units // rotations, _class_count(job, cfg),
                                          scale, chars)  # fmt: skip
        hours = None
        if gpu != "cpu" and tokens is not None and scale.params:
            hours = tokens * 2 * scale.params / (peak * mfu) / 3600
        launcher_gpus = res.gpus if res.gpus_per_node else 0
        job.request = evaluation_request(
            hours, scale.params, gpu_mem, launcher_gpus, res.timeout_min, explicit
        )
        rows.append(
            EvalPlanRow(job, job_status(job), res, units, known, tokens, scale, hours, job.request)
        )
    return rows


def format_eval_plan(title: str, rows: list[EvalPlanRow], gpu: str, mfu: float) -> str:
    todo = [r for r in rows if r.status != "finished"]
    units = make_eval_units([r.job for r in rows])
    out = [
        f"{title}: {len(rows)} evaluation jobs, {len(todo)} to run in {len(units)} Slurm "
        f"arrays (per model and distractor strategy; sharded: + a merge), "
        f"{len(rows) - len(todo)} finished",
        f"assumed GPU {gpu}" + (f", MFU {mfu:.0%} (forward passes only)" if gpu != "cpu" else ""),
        "",
    ]
    table = []
    for i, r in enumerate(rows, 1):
        res = r.resources
        gpus = r.request.gpus if r.request and r.request.gpus else None
        alloc = (
            f"{res.nodes}x{gpus} ({res.nodes * gpus} GPU)"
            if gpus
            else f"{res.nodes}x{res.tasks_per_node}"
            + (f" ({res.gpus} GPU)" if res.gpus_per_node else " (CPU)")
        )
        if r.job.shards > 1:
            alloc += f" x{r.job.shards} shards"
        after = f"{r.job.parent.stage}/{r.job.parent.name}" if r.job.parent else "-"
        table.append([
            str(i), r.job.stage, r.job.model, r.job.dataset, r.job.distractors, r.status, after,
            alloc, r.request.cell() if r.request else f"{res.timeout_min}m",
            "?" if r.questions is None else ("" if r.questions_known else "~") + f"{r.questions:,}",
            "?" if r.tokens is None else fmt_count(r.tokens),
            "?" if r.scale.params is None else fmt_count(r.scale.params),
            "-" if r.gpu_hours is None else f"{r.gpu_hours:,.2f}",
        ])  # fmt: skip
    out.append(text_table(["#", "stage", "model", "dataset", "distractors", "status", "after",
                       "nodes x tasks", "time", "questions", "tokens", "params", "GPU-h"],
                      table))  # fmt: skip
    out.append(request_line(gpu) + "; an evaluation gets one GPU when its model fits one "
               "(ranks split the questions; more only to end inside the launcher's limit), "
               "unless you set gpus_per_node/tasks_per_node; the jobs of one Slurm array share "
               "its longest request")  # fmt: skip
    sweeps = [r for r in rows if r.job.distractors == PROTOCOL_ARM and r.questions is not None]
    if sweeps:
        out.append(f"protocol rows: every arm of the sweep (eval/protocol.py), "
                   f"{sum(r.questions for r in sweeps):,} scoring units (forwards) in all"
                   + (f", {sum(r.gpu_hours or 0 for r in sweeps):,.1f} GPU-hours"
                      if gpu != "cpu" else ""))  # fmt: skip
    if any(r.questions is not None and not r.questions_known for r in rows):
        out.append("~: the split's published size (the data is not on this machine)")
    unknown = sorted({r.job.dataset for r in rows if r.questions is None})
    if unknown:
        out.append(f"questions unknown (dataset not on this machine, nor its frozen question "
                   f"file): {', '.join(unknown)}")  # fmt: skip
    no_size = sorted({f"{r.job.model} ({r.scale.source})" for r in rows if r.scale.params is None})
    if no_size:
        out.append(f"model size unknown: {', '.join(no_size)}")
    if gpu != "cpu":
        hours = [r.gpu_hours for r in todo if r.gpu_hours is not None]
        missing = len(todo) - len(hours)
        out.append(f"GPU-hours to run: {sum(hours):,.1f}" if hours else "GPU-hours: unknown")
        if hours and missing:
            out[-1] += f" ({missing} jobs unknown)"
    return "\n".join(out)
