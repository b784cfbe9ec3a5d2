"""Jinja chat templates shipped with the project, for LLMs whose tokenizer lacks a usable one."""

from __future__ import annotations

import logging
from importlib import resources

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def available_chat_templates() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".jinja") for f in files if f.name.endswith(".jinja"))


def load_chat_template(name: str) -> str:
    """The Jinja source of the shipped template `name` (e.g. "vicuna_v1", "qwen2")."""
    path = resources.files(__package__).joinpath(f"{name}.jinja")
    if not path.is_file():
        available = ", ".join(available_chat_templates())
        raise ValueError(f"unknown chat template {name!r}; available: {available}")
    # Editors end files with a newline; Jinja drops it too, so this equals the upstream string.
    return path.read_text(encoding="utf-8").removesuffix("\n")


def ensure_chat_template(
    tokenizer: PreTrainedTokenizerBase, name: str | None, force: bool = False
) -> PreTrainedTokenizerBase:
    """Install the shipped template `name` if the tokenizer has none (or if `force`)."""
    if tokenizer.chat_template is not None and not force:
        if name is not None:
            log.info("keeping the tokenizer's own chat template (llm.chat_template=%s)", name)
        return tokenizer
    if name is None:
        why = "force_chat_template is set" if force else "the tokenizer has no chat template"
        available = ", ".join(available_chat_templates())
        raise ValueError(f"{why}: set llm.chat_template to one of {available}")
    tokenizer.chat_template = load_chat_template(name)
    log.info("using the shipped chat template %r", name)
    return tokenizer
