"""LLaVA conversations -> token ids + label masks, spans taken from the chat template.

LLaVA's original preprocessing found replies by splitting on separator strings and
counting tokens per piece; when a count disagreed with the real tokenisation it printed
"tokenization mismatch" and zeroed the sample's labels. Here the template itself says
where each reply starts and ends (render with and without the reply), the text is
tokenised once with offsets, and every disagreement raises an error naming the sample.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llava_ablate.base.config import check_choice, choices_of
from llava_ablate.config import RecipeCfg

IGNORE_INDEX = -100
DEFAULT_IMAGE_TOKEN = "<image>"  # the placeholder LLaVA-format data uses
_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_SOURCES = {"user": "human", "assistant": "gpt"}

Span = tuple[int, int]  # [start, end) in characters of the rendered text


# Each error is a reason a sample is skipped; `reason` is the name it is counted under, the same
# at build time (manifest, skipped.jsonl) and at run time (data_skips.json).
class MalformedConversation(ValueError):
    """Invalid LLaVA turns: wrong JSON types, unknown speaker, empty value, wrong alternation."""

    reason = "malformed_conversation"


class TokenizationMismatch(ValueError):
    """The template or tokenizer does not split cleanly into prompt and reply tokens."""

    reason = "tokenization_mismatch"


class SampleTooLong(ValueError):
    """Too long for max_length (overflow="skip", or the image tokens alone overflow)."""

    reason = "too_long"


class ImageTagMismatch(ValueError):
    """Per-image token counts were given for another number of images than the text's tags."""

    reason = "image_tag_mismatch"


class EmptySupervision(ValueError):
    """No assistant token would be trained on."""

    reason = "empty_supervision"


class SpecialTokenInText(ValueError):
    """The data's own text holds a special token's literal (e.g. "<|im_end|>" or "</s>").

    The tokenizer would turn it into the real token: an answer containing a literal end of turn
    would teach the model to stop mid-answer. Such samples are counted, never trained on.
    """

    reason = "special_token_in_text"


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for messages about wrong types."""
    return "null" if value is None else type(value).__name__


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the model is not trained
    num_images: int
    dropped_tokens: int = 0  # cut off the tail by overflow="truncate" (counted by the run)


def _image_first(text: str) -> str:
    """LLaVA's preprocess_multimodal: one placeholder goes first, then a newline, then the rest
    of the text stripped ("What is it? <image>" -> "<image>\\nWhat is it?").

    Raw LLaVA data has both "<image>\\nQ" and "Q\\n<image>". Several placeholders
    (interleaved images) stay where the user put them.
    """
    tag = DEFAULT_IMAGE_TOKEN
    if text.count(tag) != 1:
        return text
    return f"{tag}\n{text.replace(tag, '').strip()}".strip()


def llava_to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA turns {"from": human|gpt|system, "value"} -> messages {"role", "content"}."""
    if not isinstance(conversations, list):
        raise MalformedConversation(
            f"'conversations' must be a list of turns, got {json_type_name(conversations)}"
        )
    messages: list[dict] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise MalformedConversation(
                f'turn {i}: expected an object {{"from", "value"}}, got {json_type_name(turn)}'
            )
        source, value = turn.get("from"), turn.get("value")
        if not isinstance(source, str):
            raise MalformedConversation(
                f"turn {i}: 'from' must be a string, got {json_type_name(source)}"
            )
        role = _ROLES.get(source)
        if role is None:
            raise MalformedConversation(
                f"turn {i}: unknown 'from' {source!r}; expected one of {', '.join(_ROLES)}"
            )
        if not isinstance(value, str):
            raise MalformedConversation(
                f"turn {i} ({source}): 'value' must be a string, got {json_type_name(value)}"
            )
        if not value.strip():
            raise MalformedConversation(f"turn {i} ({source}): empty value")
        if role == "system" and i != 0:
            raise MalformedConversation(f"turn {i}: a system turn is only allowed first")
        if role != "system":
            after_user = bool(messages) and messages[-1]["role"] == "user"
            expected = "assistant" if after_user else "user"
            if role != expected:
                raise MalformedConversation(
                    f"turn {i}: expected '{_SOURCES[expected]}' but got {source!r} "
                    "(turns must alternate human/gpt, starting with human)"
                )
        if role != "user" and DEFAULT_IMAGE_TOKEN in value:
            raise MalformedConversation(f"turn {i} ({source}): image outside a human turn")
        content = _image_first(value) if role == "user" else value
        messages.append({"role": role, "content": content})
    return messages


def trim_unanswered(messages: list[dict]) -> list[dict]:
    """Drop a final user turn that no reply answers: it is never trained on, only costs tokens.

    One that holds an image is malformed instead (dropping it would orphan the image).
    """
    if not messages or messages[-1]["role"] != "user":
        return messages
    if DEFAULT_IMAGE_TOKEN in messages[-1]["content"]:
        raise MalformedConversation(
            f"turn {len(messages) - 1} (human): the conversation ends on a human turn that holds "
            "an image and no reply answers it"
        )
    return messages[:-1]


def special_tokens_in(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The first special token whose literal text occurs in a message, as "turn i: 'tok'"."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(tokenizer.all_special_tokens)
    specials.discard(DEFAULT_IMAGE_TOKEN)  # the placeholder the data is meant to hold
    specials.discard("")
    for i, message in enumerate(messages):
        for token in sorted(specials):
            if token in message["content"]:
                return f"turn {i} ({_SOURCES.get(message['role'], message['role'])}): {token!r}"
    return None


def _chat_text_and_spans(
    sample_id: str, messages: list[dict], tokenizer: PreTrainedTokenizerBase
) -> tuple[str, list[Span]]:
    """Full render + the span [len(P_i), len(Q_i)) of every assistant turn i.

    P_i renders messages[:i] with the generation prompt (what the model sees before
    replying), Q_i renders messages[:i+1]; the span is the reply plus whatever
    end-of-turn text the template emits.
    """

    def render(msgs: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt
        )

    full = render(messages)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], True)
        upto = full if i == len(messages) - 1 else render(messages[: i + 1])  # the same render
        if not (full.startswith(prompt) and full.startswith(upto)):
            raise TokenizationMismatch(
                f"sample {sample_id}: the chat template is not prefix-stable at turn {i}: "
                "the conversation rendered up to this reply is not a prefix of the full "
                "rendering, so the reply cannot be located; use a template that renders "
                "earlier turns the same way whatever follows them"
            )
        if len(upto) <= len(prompt) or (spans and len(prompt) < spans[-1][1]):
            raise TokenizationMismatch(
                f"sample {sample_id}: the chat template renders no reply at turn {i}"
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def _plain_text_and_spans(
    sample_id: str, messages: list[dict], tokenizer: PreTrainedTokenizerBase, images: str
) -> tuple[str, list[Span]]:
    """LLaVA stage-1 "plain": image placeholder(s) + caption + eos; the question is dropped."""
    if [m["role"] for m in messages] != ["user", "assistant"]:
        raise MalformedConversation(
            f"sample {sample_id}: the plain format needs exactly one human and one gpt turn"
        )
    # Keep the bos a Llama/Vicuna tokenizer adds by itself (LLaVA's stage 1 has it).
    adds_bos = tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    bos = tokenizer.bos_token if tokenizer.bos_token and adds_bos else ""
    prefix = bos + images
    text = prefix + messages[1]["content"] + tokenizer.eos_token
    return text, [(len(prefix), len(text))]


def _labels(
    sample_id: str, ids: list[int], starts: list[int], ends: list[int], spans: list[Span]
) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        first, stop = bisect_left(starts, start), bisect_left(starts, end)
        # A token that crosses a span edge mixes template and reply text: no honest label.
        if (first and ends[first - 1] > start) or (stop and ends[stop - 1] > end):
            raise TokenizationMismatch(
                f"sample {sample_id}: a token straddles the edge of the reply span "
                f"[{start}, {end}); the tokenizer merges template text with the reply"
            )
        labels[first:stop] = ids[first:stop]
    return labels


def _check_prefixes(
    sample_id: str,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    ids: list[int],
    offsets: tuple[list[int], list[int]],
    spans: list[Span],
) -> None:
    """Tokenising up to each span edge must give a prefix of the full tokenisation.

    Offsets alone can hide context effects (e.g. sentencepiece's prefix space); this is
    also what makes the prompt tokenise the same at generation time.
    """
    starts, ends = offsets
    cuts = sorted({edge for span in spans for edge in span if 0 < edge < len(text)})
    if not cuts:
        return
    wanted = [bisect_left(starts, cut) for cut in cuts]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        encoded = tokenizer([text[:cut] for cut in cuts], add_special_tokens=False)["input_ids"]
        bad = [c for c, k, e in zip(cuts, wanted, encoded, strict=True) if e != ids[:k]]
    else:
        # The Rust pipeline splits the text at special added tokens before it normalises,
        # pre-tokenises or models anything, and tokenises each piece on its own: the text up to
        # a cut tokenises as the full text's tokens up to the last such token before the cut,
        # plus its own tail. Only that tail is encoded (a few characters of template instead of
        # the whole prefix, half of a sample's tokenising CPU); a tail that disagrees is checked
        # again on its whole prefix before anything is raised.
        anchors = _independent_specials(tokenizer)
        froms = [_last_anchor(ids, anchors, k) for k in wanted]
        tails = [text[ends[j - 1] if j else 0 : cut] for cut, j in zip(cuts, froms, strict=True)]
        bad = [
            cut
            for cut, j, k, e in zip(cuts, froms, wanted, _encode_fast(backend, tails), strict=True)
            if e != ids[j:k]
        ]
        if bad:
            full = _encode_fast(backend, [text[:cut] for cut in bad])
            bad = [c for c, e in zip(bad, full, strict=True) if e != ids[: bisect_left(starts, c)]]
    if bad:
        raise TokenizationMismatch(
            f"sample {sample_id}: tokenising the text up to character {bad[0]} is not a "
            "prefix of the full tokenisation"
        )


def _encode_fast(backend, texts: list[str]) -> list[list[int]]:
    # The Rust tokenizer without offsets (~1.4x faster), in the state the full text's call left
    # it (no truncation or padding); any disagreement still raises, never mislabels.
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _independent_specials(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of the special added tokens the text is split at as they are: matched on the raw
    text and absorbing no neighbouring whitespace."""
    return frozenset(
        i
        for i, t in tokenizer.added_tokens_decoder.items()
        if t.special and not (t.normalized or t.lstrip or t.rstrip or t.single_word)
    )


def _last_anchor(ids: list[int], anchors: frozenset[int], k: int) -> int:
    """The index just after the last anchor token among ids[:k] (0: none)."""
    for j in range(k, 0, -1):
        if ids[j - 1] in anchors:
            return j
    return 0


def _expand_images(
    ids: list[int], labels: list[int], image_id: int, counts: list[int]
) -> tuple[list[int], list[int]]:
    # The model puts one vision feature on each image token; image k gets counts[k] of them.
    out_ids: list[int] = []
    out_labels: list[int] = []
    start = 0
    for k in counts:  # list slices and index(), not a Python loop over every token
        at = ids.index(image_id, start)
        out_ids += ids[start:at]
        out_ids += [image_id] * k
        out_labels += labels[start:at]
        out_labels += [labels[at]] * k
        start = at + 1
    out_ids += ids[start:]
    out_labels += labels[start:]
    return out_ids, out_labels


def tokenize_conversation(
    sample_id: str,
    conversations: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt_format: str = "chat",
    num_image_tokens: int | Sequence[int],
    max_length: int,
    overflow: str = "truncate",
) -> TokenizedSample:
    """Tokenise one LLaVA-format sample and mask everything but the replies.

    prompt_format: "chat" (the tokenizer's chat template) or "plain" (stage-1 captions).
    overflow: "truncate" (cut the tail, never the image tokens) or "skip" (raise).
    Each image placeholder becomes `num_image_tokens` copies of the image token, or, given one
    count per image in order (anyres: it depends on the image's size), that image's count.
    """
    check_choice("recipe.prompt_format", prompt_format, choices_of(RecipeCfg, "prompt_format"))
    check_choice("recipe.overflow", overflow, choices_of(RecipeCfg, "overflow"))
    per_image = None if isinstance(num_image_tokens, int) else list(num_image_tokens)
    counts_given = [num_image_tokens] if per_image is None else per_image
    if any(n < 1 for n in counts_given) or max_length < 1:
        raise ValueError(
            f"need num_image_tokens, max_length >= 1: {num_image_tokens}, {max_length}"
        )
    try:
        messages = llava_to_messages(conversations)
    except MalformedConversation as err:
        raise MalformedConversation(f"sample {sample_id}: {err}") from None
    if not any(m["role"] == "assistant" for m in messages):
        raise EmptySupervision(f"sample {sample_id}: no gpt turn to train on")
    found = special_tokens_in(messages, tokenizer)
    if found:
        raise SpecialTokenInText(
            f"sample {sample_id}: {found} is the literal text of a special token; the tokenizer "
            "would read it as that token (e.g. an end of turn inside an answer)"
        )
    try:
        messages = trim_unanswered(messages)
    except MalformedConversation as err:
        raise MalformedConversation(f"sample {sample_id}: {err}") from None

    num_images = sum(m["content"].count(DEFAULT_IMAGE_TOKEN) for m in messages)
    image = getattr(tokenizer, "image_token", None) or ""
    if num_images and not image:  # a tokenizer problem, not a bad sample: raise, never skip
        raise TokenizationMismatch(
            f"sample {sample_id} has images but the tokenizer has no image_token; load it "
            f"with extra_special_tokens={{'image_token': '{DEFAULT_IMAGE_TOKEN}'}}"
        )
    if num_images and image != DEFAULT_IMAGE_TOKEN:
        messages = [
            {**m, "content": m["content"].replace(DEFAULT_IMAGE_TOKEN, image)} for m in messages
        ]

    if prompt_format == "chat":
        text, spans = _chat_text_and_spans(sample_id, messages, tokenizer)
    else:  # plain
        text, spans = _plain_text_and_spans(sample_id, messages, tokenizer, image * num_images)

    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = enc["input_ids"]
    starts, ends = [s for s, _ in enc["offset_mapping"]], [e for _, e in enc["offset_mapping"]]
    labels = _labels(sample_id, ids, starts, ends, spans)
    _check_prefixes(sample_id, tokenizer, text, ids, (starts, ends), spans)

    if num_images:
        image_id = tokenizer.image_token_id
        if ids.count(image_id) != num_images:
            raise TokenizationMismatch(
                f"sample {sample_id}: {num_images} image placeholders gave "
                f"{ids.count(image_id)} image tokens; {image!r} must be one special token"
            )
        if per_image is not None and len(per_image) != num_images:
            raise ImageTagMismatch(
                f"sample {sample_id}: {num_images} <image> tag(s), {len(per_image)} image(s)"
            )
        counts = per_image if per_image is not None else [num_image_tokens] * num_images
        ids, labels = _expand_images(ids, labels, image_id, counts)
    elif per_image:
        raise ImageTagMismatch(f"sample {sample_id}: no <image> tag, {len(per_image)} image(s)")

    if len(ids) > max_length:
        image_end = len(ids) - ids[::-1].index(image_id) if num_images else 0
        if overflow == "skip" or image_end > max_length:
            why = f"; its image tokens end at {image_end}" if image_end > max_length else ""
            raise SampleTooLong(
                f"sample {sample_id}: {len(ids)} tokens > max_length {max_length}{why}"
            )
        dropped = len(ids) - max_length
        ids, labels = ids[:max_length], labels[:max_length]
    else:
        dropped = 0
    if labels.count(IGNORE_INDEX) == len(labels):  # C speed: ~1,000 labels a sample
        raise EmptySupervision(f"sample {sample_id}: no reply token within {max_length}")
    return TokenizedSample(
        input_ids=ids, labels=labels, num_images=num_images, dropped_tokens=dropped
    )
