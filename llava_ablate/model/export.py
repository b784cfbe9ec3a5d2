"""Export a trained engine to a Hugging Face directory that stock transformers loads.

`LlavaForConditionalGeneration.from_pretrained(dir)` (`LlavaOnevisionForConditionalGeneration`
for arch=llava_onevision) + `AutoProcessor.from_pretrained(dir)` is all a user (or vLLM /
lmms-eval `llava_hf` / `llava_onevision`) needs: weights, config, tokenizer with the image
token, image processor and chat template. LoRA is merged; ZeRO-3 shards are gathered by
DeepSpeed's own `save_16bit_model`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from peft import PeftModel

from llava_ablate.base import video_processors
from llava_ablate.base.chat_templates import multimodal_chat_template, processor_messages, render
from llava_ablate.model.lora import merged

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


def is_exported(out_dir: Path) -> bool:
    return (out_dir / MARKER).exists()


def export_engine(engine, processor, out_dir: Path, info: dict) -> Path:
    """Collective: every rank calls it; rank 0 writes `out_dir`."""
    out_dir = Path(out_dir)
    staging = out_dir.parent / (out_dir.name + ".weights")
    engine.save_16bit_model(str(staging), "consolidated.pt")  # gathers ZeRO-3 partitions
    dist.barrier()
    if dist.get_rank() == 0:
        state = torch.load(staging / "consolidated.pt", map_location="cpu", weights_only=True)
        model = _skeleton_like(engine.module)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        tied = {k for k in missing if k.endswith("lm_head.weight")}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: missing {missing[:5]} unexpected {unexpected[:5]}")
        model.tie_weights()
        model = merged(model)
        model.config.use_cache = (
            True  # generation wants the KV cache (training passes use_cache=False)
        )
        _stop_at_end_of_turn(model.generation_config, processor)
        model.save_pretrained(out_dir)
        save_processor(processor, out_dir)
        (out_dir / "llava_ablate.json").write_text(json.dumps(info, indent=2, default=str))
        (staging / "consolidated.pt").unlink()
        staging.rmdir()
        (out_dir / MARKER).touch()
        log.info("exported %s", out_dir)
    dist.barrier()
    return out_dir


STANDARD_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
]


def save_processor(processor, out_dir: Path) -> None:
    """Save `processor` with a chat template that takes the standard multimodal message format
    and renders what training rendered; reload it and check that stock prompting works."""
    from transformers import AutoProcessor

    processor.chat_template = multimodal_chat_template(processor.tokenizer, processor.chat_template)
    processor.save_pretrained(out_dir)
    # Loading this processor without torchvision, where llava_ablate is not installed: the card
    # says how (a processor with a video half needs the call).
    shutil.copyfile(video_processors.__file__, Path(out_dir) / video_processors.WITHOUT_TORCHVISION)
    # The file both the tokenizer and the processor load: the processor writes it last.
    reloaded = AutoProcessor.from_pretrained(out_dir)
    prompt = reloaded.apply_chat_template(STANDARD_MESSAGES, add_generation_prompt=True)
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is it?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    if prompt != expected:
        raise RuntimeError(
            f"export {out_dir}: the saved chat template renders the standard multimodal message "
            f"as {prompt!r}, but training renders {expected!r}"
        )


def end_of_turn_id(processor) -> int:
    """The token the chat template closes an assistant answer with (ChatML "<|im_end|>",
    vicuna "</s>"): what the model was trained to emit when it is done."""
    answer = "Zq"
    full = render(processor, processor_messages("Q", answer, image=False), False)
    after = full[full.rindex(answer) + len(answer) :]
    ids = processor.tokenizer(after, add_special_tokens=False).input_ids
    if not ids:
        return processor.tokenizer.eos_token_id
    return ids[0]


def _stop_at_end_of_turn(generation_config, processor) -> None:
    """generate() stops at the end of the answer, not at max_new_tokens."""
    tok = processor.tokenizer
    stops = [end_of_turn_id(processor)] + (
        [tok.eos_token_id] if tok.eos_token_id is not None else []
    )
    generation_config.eos_token_id = list(dict.fromkeys(stops))
    generation_config.pad_token_id = tok.pad_token_id
    generation_config.use_cache = True


def _skeleton_like(module: torch.nn.Module) -> torch.nn.Module:
    """An empty (meta) copy of the trained architecture (Llava or LlavaOnevision), LoRA wrapper
    included."""
    base = module.get_base_model() if isinstance(module, PeftModel) else module
    with torch.device("meta"):
        skeleton = type(base)(base.config)
    if isinstance(module, PeftModel):
        from peft import get_peft_model

        config = module.peft_config["default"]
        skeleton = get_peft_model(skeleton, config)
    return skeleton
