"""Structured configs of the classification evaluator (`conf/eval/`, `conf/evaluate.yaml`).

`EvalCfg` is the part shared by the standalone `evaluate.py` and the training hook; `EvaluateConfig`
is `evaluate.py`'s primary config (which model, where results go, plus `eval`). It sits beside
`config.py` (which embeds `EvalCfg`), below every package, so data, model and eval may all import
the schemas and nothing imports upwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from llava_ablate.base.config import (
    ConfigError,
    PathsCfg,
    Range,
    ValidateOnStartBase,
    check_choices,
    check_known_keys,
    choices_of,
)

DatasetKind = Literal[
    "imagenet",
    "imagenetv2",
    "objectnet",
    "caltech101",
    "cub200",
    "food101",
    "gldv2",
    "flickr_sportlogos10",
    "flowers102",
    "stanford_cars",
    "image_folder",
    "csv",
    "jsonl",
    "parquet",
]
# name_likelihood, generate, open: MLLMs only; all_classes: both (an MLLM's is the likeliest class
# name over every class, a zero-shot baseline's the most similar class)
Scorer = Literal["likelihood", "name_likelihood", "generate", "all_classes", "open"]
# random: drawn uniformly; hard: the most similar names by a text tower; image: the classes an
# image tower ranks highest for that very image (FOCI's image-level confusions); file: given.
Distractors = Literal["random", "hard", "image", "file"]
HOOK_SCORERS = ("likelihood", "name_likelihood")  # fixed forwards per question: ZeRO-3 safe


@dataclass
class DatasetCfg:
    kind: Annotated[str, DatasetKind] = MISSING
    root: str = MISSING  # the dataset's directory (or the CSV/JSONL/parquet file)
    split: str = "test"  # test | val | train | all (what the layout offers; ImageNet: val)
    classnames: str | None = None  # a file overriding the class names (one per line, or TSV)
    # Generic CSV/JSONL/parquet sources: which columns hold the image and the class name.
    image_column: str = "image"
    label_column: str = "label"
    per_class: int | None = None  # sub-sample: at most N images per class
    total: int | None = None  # sub-sample: at most N images overall (after per_class)
    builtin: str | None = None  # a dataset the project generates offline into `root`
    # stanford_cars: "2000 AM General Hummer SUV" (VLMClassifier, most papers) or, false, the
    # devkit's own "AM General Hummer SUV 2000".
    year_first: bool = True


@dataclass
class QuestionsCfg:
    num_options: int = 26  # A-Z; fewer when a dataset has fewer classes
    distractors: Annotated[str, Distractors] = "random"
    # Text encoder for `hard`: "auto" (CLIP text tower from `hard_encoder_path` if set, else the
    # labelled lexical fallback), "clip:<hub id or dir>", "siglip:<hub id or dir>", "tfidf".
    encoder: str = "auto"
    hard_encoder_path: str | None = None
    hard_pool: int = 0  # >0: draw the distractors from the N most similar names, not the top k-1
    # `image`: the CLIP/SigLIP model whose image embedding ranks the classes for each image,
    # "clip:<hub id or dir>" or "siglip:<hub id or dir>".
    image_encoder: str | None = None
    options_file: str | None = None  # `file`: JSON {class: [distractors]} or JSONL per sample
    seed: int = 1234  # VLMClassifier's data seed
    dir: str | None = None  # frozen question sets live here (None: <out_dir>/questions)
    question: str = "What is the main object in this image?"
    instruction: str = "Answer with the option's letter from the given choices directly."


@dataclass
class ScoringCfg:
    # likelihood: the option letter the model finds likeliest (the paper's 26-option MCQ);
    # name_likelihood: the option whose class name is likeliest as the answer (VLMClassifier's
    # probabilistic inference, on the same options); generate: parse free text (MLLMs);
    # all_classes: argmax over every class (CLIP/SigLIP). The first listed is the headline.
    scorers: list[Annotated[str, Scorer]] = field(default_factory=lambda: ["likelihood"])
    batch_size: int = 8
    max_new_tokens: int = 16  # generate only
    # name_likelihood: the prompt the names answer (null: the MCQ text itself; or an open
    # question such as "What is shown in this image?") and how an answer is written.
    names_prompt: str | None = None
    names_answer: str = "{option}"  # may use {option} and {letter}
    cyclic_permutations: int = 0  # >1: also score k rotated option orders; report consistency
    # open: the question a free answer (no options) replies to, matched to every class's name
    # and synonyms; all_classes (MLLMs): the prompt every class name is scored after.
    open_prompt: str = "What is the main object in this image? Answer with its name only."
    synonyms: str | None = None  # open: JSON {class name: [synonyms]}


@dataclass
class WordingCfg:
    question: str = MISSING
    instruction: str = MISSING


def _wordings() -> list[WordingCfg]:
    return [
        WordingCfg(QuestionsCfg.question, QuestionsCfg.instruction),
        WordingCfg("Which of these is shown in the image?", "Reply with the letter only."),
        WordingCfg("Classify this image.", "Answer with the letter of the correct class."),
    ]


@dataclass
class ProtocolCfg:
    """The protocol sweep (`eval=protocol`): the same frozen questions under other protocols,
    so a model's number comes with how much it depends on them (eval/protocol.py)."""

    enabled: bool = False
    # Options per question, nested in the frozen set's: true class + its first k-1 distractors.
    num_options: list[int] = field(default_factory=lambda: [2, 4, 10, 26])
    all_classes: bool = True  # likelihood over every class name (scorer all_classes)
    # Distractor difficulty, each a question set of the frozen set's size and k.
    difficulties: list[Annotated[str, Distractors]] = field(
        default_factory=lambda: ["random", "hard", "image"]
    )
    wordings: list[WordingCfg] = field(default_factory=_wordings)
    rotations: int = 0  # cyclic rotations of the options: 0 = all k, else that many
    open_answer: bool = True  # free generation matched to the class names (scorer open)
    # open: also the class whose name is nearest the answer by this text encoder (labelled;
    # `auto`, `tfidf`, `clip:<id|dir>`, `siglip:<id|dir>`; null: not reported).
    open_encoder: str | None = "tfidf"
    # The scorer of every sweep (the k, difficulty, wording and order axes).
    scorer: Annotated[str, Literal["likelihood", "name_likelihood"]] = "likelihood"
    # At most this many of the frozen set's questions (its first ones; null: all).
    max_questions: int | None = None
    # Questions re-scored one at a time in reverse order, to record on the card the largest
    # score difference to the batched run (0: none).
    invariance_check: int = 4


@dataclass
class HardCfg:
    mode: Annotated[str, Literal["none", "bottom_q", "list", "exposure"]] = "none"
    q: float = 0.2  # bottom_q / exposure: the fraction of classes called hard
    # bottom_q: a reference run's per_class.csv (class_name,accuracy); "{dataset}" is substituted
    reference: str | None = None
    classes: list[str] = field(default_factory=list)  # list: explicit class names
    exposure_table: str | None = None  # exposure: CSV `class_name,exposure` (data issue)


@dataclass
class StatsCfg:
    bootstrap: int = 2000  # resamples for the 95% CIs
    seed: int = 0
    compare_to: str | None = None  # another run's results dir: paired bootstrap + McNemar


@dataclass
class HookCfg:
    every_steps: int = 0  # evaluate during training every N optimizer steps; 0 = never
    at_end: bool = True
    max_questions: int | None = 256  # per dataset: the fixed subset the hook scores


@dataclass
class EvalCfg:
    datasets: dict[str, DatasetCfg] = field(default_factory=dict)  # name -> dataset
    questions: QuestionsCfg = field(default_factory=QuestionsCfg)
    scoring: ScoringCfg = field(default_factory=ScoringCfg)
    hard: HardCfg = field(default_factory=HardCfg)
    stats: StatsCfg = field(default_factory=StatsCfg)
    protocol: ProtocolCfg = field(default_factory=ProtocolCfg)
    hook: HookCfg = field(default_factory=HookCfg)
    wandb: bool = False  # log metrics to W&B (never fails the run when unavailable)
    wandb_project: str = "llava-ablate-eval"


@dataclass
class ModelCfg:
    # mllm: any AutoModelForImageTextToText; clip | siglip: a zero-shot baseline
    type: Annotated[str, Literal["mllm", "clip", "siglip"]] = "mllm"
    path: str = MISSING  # exported directory or hub id
    name: str | None = None  # label in results; default: the path's last component
    dtype: Annotated[str, Literal["auto", "bf16", "fp16", "fp32"]] = "auto"  # auto: bf16 on GPU
    attn_implementation: str = "sdpa"
    templates: str = "simple"  # clip/siglip: simple ("a photo of a {}.") | openai80 | a file
    # auto: as the family's makers evaluate it (eval/families: pad for LLaVA-1.5 and our llava
    # exports; native for the dynamic-resolution and tiling families) | pad: LLaVA-1.5's
    # pad-to-square (never for anyres processors, which tile at the image's aspect ratio) |
    # native: as the processor takes it (training's vision.image_aspect=resize). What reached the
    # model (pad | native) is recorded in metrics.json (data/images.py `image_aspect`).
    image_aspect: Annotated[str, Literal["auto", "pad", "native"]] = "auto"


@dataclass
class ShardCfg:
    """One array task's part of every dataset's questions (an evaluation grid's `shards`)."""

    index: int = 0  # this task scores the question units index, index + count, ...
    count: int = 1  # >1: predictions only; a run with count=1 afterwards merges and scores


@dataclass
class EvaluateConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    paths: PathsCfg = field(default_factory=PathsCfg)
    out_dir: str = MISSING
    resume: bool = True  # skip question ids already in predictions
    shard: ShardCfg = field(default_factory=ShardCfg)


# The allowed values as tuples, for code that lists them (declared in the types above).
DATASET_KINDS = choices_of(DatasetCfg, "kind")
DISTRACTORS = choices_of(QuestionsCfg, "distractors")
SCORERS = choices_of(ScoringCfg, "scorers")
HARD_MODES = choices_of(HardCfg, "mode")
MODEL_TYPES = choices_of(ModelCfg, "type")


def model_tag(name: str | None, path: str) -> str:
    """A results-folder name: `model.name`, else the path's last part (its variant for exports)."""
    if name:
        return name
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if len(parts) >= 2 and parts[-1] == "export":
        return parts[-2]
    return parts[-1] if parts else "model"


def register_eval_configs() -> None:
    OmegaConf.register_new_resolver("model_tag", model_tag, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="evaluate_base", node=EvaluateConfig)
    cs.store(group="eval", name="eval_base", node=EvalCfg)


# Every size, count and fraction of the evaluator (eval.datasets.<name>.* are checked per dataset).
_EVAL_RANGES: dict[str, Range] = {
    "questions.hard_pool": Range(low=0),  # 0: the top k-1 most similar names
    "scoring.batch_size": Range(low=1),
    "scoring.max_new_tokens": Range(low=1),
    "scoring.cyclic_permutations": Range(low=0),
    "hard.q": Range(0, 1),
    "stats.bootstrap": Range(low=1),
    "stats.seed": Range(low=0),  # numpy's generators take no negative seed
    "hook.every_steps": Range(low=0),  # 0: never during training
    "hook.max_questions": Range(low=1, nullable=True),  # null: every question
    "protocol.rotations": Range(low=0),  # 0: all k
    "protocol.max_questions": Range(low=1, nullable=True),
    "protocol.invariance_check": Range(low=0),
}
_SUBSAMPLE = Range(low=1, nullable=True)


def validate_eval(cfg: EvalCfg) -> None:
    """Check the values OmegaConf cannot type; raise ConfigError naming the key."""
    check_choices(cfg, "eval")  # every key whose type declares its values
    for name, ds in cfg.datasets.items():
        _SUBSAMPLE.check(f"eval.datasets.{name}.per_class", ds.per_class)
        _SUBSAMPLE.check(f"eval.datasets.{name}.total", ds.total)
    for key, allowed in _EVAL_RANGES.items():
        section, field_name = key.split(".")
        allowed.check(f"eval.{key}", getattr(getattr(cfg, section), field_name))
    q = cfg.questions
    if not 2 <= q.num_options <= 26:
        raise ConfigError(f"eval.questions.num_options={q.num_options}: must be in 2..26 (A-Z)")
    # What the protocol sweep's difficulty axis builds counts as asked for, too.
    strategies = {q.distractors, *(cfg.protocol.difficulties if cfg.protocol.enabled else ())}
    if "file" in strategies and not q.options_file:
        raise ConfigError("eval.questions.distractors=file needs eval.questions.options_file")
    if "image" in strategies and not q.image_encoder:
        raise ConfigError(
            "image distractors need eval.questions.image_encoder (clip:<hub id|dir> or "
            "siglip:<hub id|dir>)"
        )
    bad_k = [k for k in cfg.protocol.num_options if not 2 <= k <= 26]
    if bad_k:
        raise ConfigError(f"eval.protocol.num_options={bad_k}: each must be in 2..26 (A-Z)")
    if cfg.protocol.enabled and not cfg.protocol.wordings:
        raise ConfigError("eval.protocol.wordings is empty: give at least one phrasing")
    if not cfg.scoring.scorers:
        raise ConfigError(f"eval.scoring.scorers is empty; choose from {list(SCORERS)}")
    answer = cfg.scoring.names_answer
    try:
        answer.format(option="x", letter="A")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"eval.scoring.names_answer={answer!r}: {e!r}; only {{option}} and {{letter}} exist"
        ) from None
    if "{option}" not in answer:
        raise ConfigError(f"eval.scoring.names_answer={answer!r} must contain {{option}}")
    if cfg.hard.mode == "bottom_q" and not cfg.hard.reference:
        raise ConfigError("eval.hard.mode=bottom_q needs eval.hard.reference (a per_class.csv)")
    if cfg.hard.mode == "exposure" and not cfg.hard.exposure_table:
        raise ConfigError("eval.hard.mode=exposure needs eval.hard.exposure_table")
    if cfg.hard.mode in ("bottom_q", "exposure") and not 0 < cfg.hard.q < 1:
        raise ConfigError(f"eval.hard.q={cfg.hard.q}: must be in (0, 1)")


def validate_evaluate(cfg: EvaluateConfig) -> None:
    """evaluate.py's config (a composed DictConfig or the EvaluateConfig made from it)."""
    check_known_keys(cfg)  # `+model.foo=1` is added even in struct mode
    check_choices(cfg.model, "model")
    scorers = set(cfg.eval.scoring.scorers)
    if cfg.model.type != "mllm" and "generate" in scorers:
        raise ConfigError(
            f"model.type={cfg.model.type} is a zero-shot baseline: it has no `generate` scorer"
        )
    if cfg.model.type != "mllm" and "name_likelihood" in scorers:
        raise ConfigError(
            f"model.type={cfg.model.type} is a zero-shot baseline: it has no `name_likelihood` "
            "scorer (its `likelihood` already matches the image against each option's name)"
        )
    if cfg.model.type != "mllm" and "open" in scorers:
        raise ConfigError(f"model.type={cfg.model.type} is a zero-shot baseline: it has no "
                          "`open` scorer (it cannot write an answer)")  # fmt: skip
    if not cfg.eval.datasets:
        raise ConfigError("no dataset selected: e.g. eval/datasets=[imagenet,cub200]")
    Range(low=1).check("shard.count", cfg.shard.count)
    Range(0, cfg.shard.count - 1).check("shard.index", cfg.shard.index)
    if cfg.shard.count > 1 and not cfg.resume:
        raise ConfigError("resume=false would delete the other shards' predictions; "
                          "delete the results directory instead")  # fmt: skip
    validate_eval(cfg.eval)


class ValidateOnStart(ValidateOnStartBase):
    """`hydra.callbacks.validate` in conf/evaluate.yaml: no results folder for a config that
    cannot run."""

    def validate(self, config: DictConfig) -> None:
        validate_evaluate(config)  # type: ignore[arg-type]
