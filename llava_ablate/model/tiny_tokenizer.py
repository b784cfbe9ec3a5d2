"""A tiny byte-level BPE tokenizer, trained offline so tests and tiny configs download nothing."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llava_ablate.base.chat_templates import load_chat_template
from llava_ablate.base.files import atomic_write

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>"]

# Enough English for ~250 merges, plus the words of the chat templates and the classification
# evals. Both templates' strings are always in, so the vocabulary does not depend on the template.
_CORPUS = """\
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT: system user assistant
You are a helpful assistant. What is shown in the image? Describe the image in detail.
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a red chair by the window.
Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.
The image shows a small bird standing on a branch; the sky behind it is blue and has no clouds.
Which of the following best describes the picture? Answer with the option's letter from the
given choices.
Options: A. airplane B. automobile C. bird D. cat E. deer F. dog G. frog H. horse I. ship J. truck
The digits are zero, one, two, three, four, five, six, seven, eight and nine: 0 1 2 3 4 5 6 7 8 9.
There are three people in the picture. Two of them are wearing hats and one is holding an umbrella.
It is a sunny day in the park, and children are playing football on the green grass near the river.
Yes. No. I think the answer is the second one, because the animal has feathers and a beak.
"""


def _train(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok


def build_tiny_tokenizer(
    out_dir: Path, chat_template: str, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train (or load, if `out_dir` already holds it) a tiny tokenizer for a shipped template.

    `chat_template` names a shipped template ("vicuna_v1", "qwen2"). bos `<s>`, eos `</s>`, pad
    `<pad>`, and `<image>` as `tokenizer.image_token`. The templates add bos themselves, so the
    tokenizer adds no special tokens on its own.
    """
    out_dir = Path(out_dir)
    template = load_chat_template(chat_template)
    if (out_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(out_dir)
        if tok.chat_template == template and len(tok) == vocab_size:
            return tok
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train(vocab_size),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = template
    # Save next to out_dir and rename, so concurrent ranks never read a half-written directory.
    try:
        with atomic_write(out_dir) as tmp:
            fast.save_pretrained(tmp)
    except OSError:  # another process won the race; its tokenizer is identical
        if not (out_dir / "tokenizer.json").is_file():
            raise
    return AutoTokenizer.from_pretrained(out_dir)
