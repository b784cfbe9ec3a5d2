"""Chat rendering shared by data, model (build, export) and eval: the Jinja chat templates shipped
with the project, for LLMs whose tokenizer lacks a usable one; the multimodal wrapper every
processor (and so every export) gets; and rendering processor-style messages through them."""

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


# Processors pass content as a list of parts; many LLM templates (SmolLM2's) only concatenate
# strings. This preamble rewrites list content into LLaVA's string form, the one training renders
# (`<image>\n` per image, first, then the text), and leaves string content untouched, so the
# template below it renders exactly what it rendered for training.
MULTIMODAL_MARKER = "{#- llava-ablate: multimodal content -#}"
MULTIMODAL_PREAMBLE = (
    MULTIMODAL_MARKER
    + r"""
{%- set _mm = namespace(messages=[]) -%}
{%- for _m in messages -%}
    {%- if _m['content'] is string or _m['content'] is none -%}
        {%- set _mm.messages = _mm.messages + [_m] -%}
    {%- else -%}
        {%- set _images = _m['content'] | selectattr('type', 'equalto', 'image') | list -%}
        {%- set _texts = _m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') -%}
        {%- set _mm.messages = _mm.messages + [dict(_m, content='<image>\n' * (_images | length) + _texts | join(''))] -%}
    {%- endif -%}
{%- endfor -%}
{%- set messages = _mm.messages -%}
"""
)

_PROBE_PARTS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
]
_PROBE_STRINGS = [
    {"role": "user", "content": "<image>\nQ?"},
    {"role": "assistant", "content": "A."},
]


def _renders_parts_as_strings(tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)

    try:
        return render(_PROBE_PARTS) == render(_PROBE_STRINGS)
    except Exception:  # noqa: BLE001 - a template that cannot render parts needs the wrapper
        return False


def multimodal_chat_template(
    tokenizer: PreTrainedTokenizerBase, template: str | None = None
) -> str:
    """`template` (default: the tokenizer's) made to accept processor-style list content.

    A template that already renders `[{"type": "image"}, {"type": "text", ...}]` the way it
    renders LLaVA's `"<image>\nQ"` (the shipped vicuna_v1 and qwen2) is returned unchanged;
    others get MULTIMODAL_PREAMBLE in front. Applying it twice changes nothing.
    """
    template = template if template is not None else tokenizer.chat_template
    if template is None:
        raise ValueError("the tokenizer has no chat template; set llm.chat_template")
    if template.startswith(MULTIMODAL_MARKER) or _renders_parts_as_strings(tokenizer, template):
        return template
    wrapped = MULTIMODAL_PREAMBLE + template
    if not _renders_parts_as_strings(tokenizer, wrapped):
        raise ValueError(
            "the chat template renders the standard multimodal message format differently from "
            "LLaVA's string form even with the multimodal preamble; ship a template for this LLM "
            "in llava_ablate/base/chat_templates/ and set llm.chat_template + force_chat_template"
        )
    return wrapped


def processor_messages(text: str, answer: str | None = None, image: bool = True) -> list[dict]:
    """One user turn (an image first unless `image` is False, then `text`) and, with `answer`,
    the assistant's reply, in the processor-style format (content as a list of parts)."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    msgs = [{"role": "user", "content": content}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    """The processor's chat template applied to processor-style messages (list content)."""
    templater = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    kw = {"add_generation_prompt": add_generation_prompt, "tokenize": False}
    try:
        return templater.apply_chat_template(messages, **kw)
    except TypeError as e:  # a string-only LLM template (e.g. SmolLM2's) in an old export
        raise ValueError(
            f"the chat template of this model does not take the standard multimodal message "
            f"format ({e}); re-export it with this version (exports write a multimodal-aware "
            "template), or give it one: processor.chat_template = llava_ablate.base."
            "chat_templates.multimodal_chat_template(processor.tokenizer)"
        ) from e
