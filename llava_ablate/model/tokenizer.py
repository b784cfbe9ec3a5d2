"""The LLM's tokenizer for a config: the tiny test tokenizer or a pretrained one, with the image
placeholder token and a chat template. Its own module so that the built-in LLMs (mini_lm) can
load it without importing the model builder that builds them."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llava_ablate.base.chat_templates import ensure_chat_template
from llava_ablate.config import LLMCfg
from llava_ablate.model.sources import resolve_llm_source
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

IMAGE_TOKEN = "<image>"


def build_tokenizer(llm: LLMCfg, cache_dir: str | Path) -> PreTrainedTokenizerBase:
    if llm.tokenizer == "tiny":
        if llm.chat_template is None:
            raise ValueError("llm.tokenizer=tiny needs llm.chat_template (e.g. vicuna_v1, qwen2)")
        out = Path(cache_dir) / "tokenizers" / f"tiny-{llm.chat_template}"
        tok = build_tiny_tokenizer(out, llm.chat_template)
    else:
        src = llm.tokenizer or llm.pretrained
        if src is None:
            raise ValueError(f"llm={llm.name}: set llm.tokenizer (a path, hub id, or 'tiny')")
        # transformers 5 adds the token to the vocabulary and sets `tokenizer.image_token`.
        tok = AutoTokenizer.from_pretrained(
            resolve_llm_source(src, llm.gguf_file, cache_dir),
            extra_special_tokens={"image_token": IMAGE_TOKEN},
        )
    ensure_chat_template(tok, llm.chat_template, force=llm.force_chat_template)
    if IMAGE_TOKEN not in tok.get_vocab():
        raise RuntimeError(f"could not add {IMAGE_TOKEN} to the tokenizer of llm={llm.name}")
    if tok.pad_token is None:  # Llama/Vicuna ship none; LLaVA pads with unk
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok
