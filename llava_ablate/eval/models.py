"""MLLMs as ChoiceModels: our exports and public Hugging Face models, through their processors'
chat templates.

The letter each option is answered with is found by rendering the chat template with an
assistant turn holding just that letter and taking the first token after the generation prompt:
vicuna_v1 answers " A" (space-prefixed), ChatML "A". Reading a fixed `tokenizer("A")` instead
would silently score the wrong token for half the templates.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager

import numpy as np
import torch

from llava_ablate.base.chat_templates import processor_messages, render
from llava_ablate.base.mcq import LETTERS
from llava_ablate.base.video_processors import allow_video_processors
from llava_ablate.eval.scoring import PromptItem

log = logging.getLogger(__name__)


def letter_token_ids(processor, n: int = 26) -> tuple[list[int], str]:
    """(token id of each answer letter, text to append to the generation prompt first).

    Normally each letter is the template's first assistant token and the suffix is empty. Some
    vocabularies lack a space-prefixed letter (" K" -> "Ġ", "K"): then the whitespace the template
    puts before the answer becomes part of the prompt and every letter is read as its bare token,
    the same way for all 26, so the scores stay comparable.
    """
    tok = processor.tokenizer
    prompt = render(processor, processor_messages("Q", image=False), True)
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    natural, fulls = [], []
    for letter in LETTERS[:n]:
        full = render(processor, processor_messages("Q", letter, image=False), False)
        full_ids = tok(full, add_special_tokens=False).input_ids
        i = next(
            (j for j, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
            len(prompt_ids),
        )
        ok = i < len(full_ids) and tok.decode([full_ids[i]]).strip() == letter
        natural.append(full_ids[i] if ok else None)
        fulls.append(full)
    if None not in natural and len(set(natural)) == n:
        return natural, ""
    if not fulls[0].startswith(prompt):
        raise ValueError("the chat template's answer turn does not extend its generation prompt")
    suffix = fulls[0][len(prompt) : fulls[0].index("A", len(prompt))]
    if suffix.strip():
        raise ValueError(f"unexpected text {suffix!r} between the generation prompt and the answer")
    bare = [tok(letter, add_special_tokens=False).input_ids for letter in LETTERS[:n]]
    if any(len(b) != 1 for b in bare) or len({b[0] for b in bare}) != n:
        raise ValueError(
            "cannot isolate single answer-letter tokens for this tokenizer/template: "
            f"{[tok.convert_ids_to_tokens(b) for b in bare[:5]]}..."
        )
    return [b[0] for b in bare], suffix


@contextmanager
def _padding_side(tokenizer, side: str):
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old


class MLLMChoiceModel:
    """Any image-text-to-text model + processor (Llava, LLaVA-OneVision, Qwen2-VL, ...)."""

    scorers = ("likelihood", "name_likelihood", "generate")

    def __init__(
        self,
        model,
        processor,
        *,
        max_new_tokens: int = 16,
        names_prompt: str | None = None,
        names_answer: str = "{option}",
    ):
        self.model, self.processor = model, processor
        self.max_new_tokens = max_new_tokens
        self.names_prompt, self.names_answer = names_prompt, names_answer
        self._answer_ids: dict[str, list[int]] = {}
        # transformers 5 renames `past_key_values` to `cache`, model by model.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.letter_ids, self.answer_prefix = letter_token_ids(processor)
        tok = processor.tokenizer
        # Templates that write bos themselves must not get a second one from the tokenizer.
        probe = render(processor, processor_messages("Q", image=False), True)
        self.add_special_tokens = not (tok.bos_token and probe.startswith(tok.bos_token))
        log.info(
            "answer letter tokens %s... after %r",
            tok.convert_ids_to_tokens(self.letter_ids[:3]),
            self.answer_prefix,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, items: list[PromptItem], side: str, suffix: str = "") -> dict:
        texts = [render(self.processor, processor_messages(it.text), True) + suffix for it in items]
        with _padding_side(self.processor.tokenizer, side):
            enc = self.processor(
                images=[it.image for it in items],
                text=texts,
                padding=True,
                return_tensors="pt",
                add_special_tokens=self.add_special_tokens,
            )
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in enc.items():
            v = v.to(self.device)
            out[k] = v.to(dtype) if torch.is_floating_point(v) else v
        return out

    @torch.no_grad()
    def letter_scores(self, items: list[PromptItem]) -> np.ndarray:
        # Right padding keeps every row's positions exact; the head runs on the last real
        # position only (a full [B, T, vocab] logit tensor would dwarf the model on 150k vocabs).
        inputs = self._inputs(items, "right", self.answer_prefix)
        last = inputs["attention_mask"].sum(dim=1) - 1
        base = getattr(self.model, self.model.base_model_prefix, None)
        head = self.model.get_output_embeddings()
        if base is not None and head is not None:
            hidden = base(**inputs).last_hidden_state
            logits = head(hidden[torch.arange(len(items)), last])
        else:
            logits = self.model(**inputs).logits[torch.arange(len(items)), last]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return logprobs[:, self.letter_ids].cpu().numpy()

    def answer_ids(self, answer: str) -> list[int]:
        """Tokens of `answer` as the template writes it after the generation prompt (with any
        whitespace the template puts first, e.g. vicuna's " "), without the end of turn."""
        if answer not in self._answer_ids:
            prompt = render(self.processor, processor_messages("Q", image=False), True)
            full = render(self.processor, processor_messages("Q", answer, image=False), False)
            if not full.startswith(prompt) or answer not in full[len(prompt) :]:
                raise ValueError(
                    f"the chat template does not write the answer {answer!r} after its "
                    "generation prompt; name_likelihood cannot score it"
                )
            text = full[len(prompt) : full.index(answer, len(prompt)) + len(answer)]
            ids = self.processor.tokenizer(text, add_special_tokens=False).input_ids
            self._answer_ids[answer] = ids
        return self._answer_ids[answer]

    @torch.no_grad()
    def name_scores(self, items: list[PromptItem]) -> np.ndarray:
        # One forward over image + prompt, then all options' answers at once on copies of its
        # KV cache: 26 answers cost one prefix, not 26. Two forwards per item on every rank,
        # whatever the answers' lengths, so ZeRO-3 ranks stay in step.
        scores = np.full((len(items), 26), -np.inf)
        for row, item in enumerate(items):
            if self.names_prompt is not None:
                item = PromptItem(item.question, item.image, self.names_prompt)
            inputs = self._inputs([item], "right")
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            options = item.question.options
            answers = [
                self.answer_ids(self.names_answer.format(option=o, letter=LETTERS[i]))
                for i, o in enumerate(options)
            ]
            width = max(len(a) for a in answers)
            pad = self.processor.tokenizer.pad_token_id or 0
            ids = torch.tensor([a + [pad] * (width - len(a)) for a in answers], device=self.device)
            mask = (torch.arange(width) < torch.tensor([len(a) for a in answers])[:, None]).long()
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_repeat_interleave(len(answers))
            prefix = inputs["attention_mask"].expand(len(answers), -1)
            cont = self.model(
                input_ids=ids,
                attention_mask=torch.cat([prefix, mask.to(self.device)], dim=1),
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
            # Token j of each answer is predicted by position j-1 (the prefix's last for j=0).
            logp = torch.log_softmax(cont.logits[:, :-1].float(), dim=-1)
            for k, a in enumerate(answers):
                total = first[a[0]]
                if len(a) > 1:
                    total = total + logp[k, torch.arange(len(a) - 1), torch.tensor(a[1:])].sum()
                scores[row, k] = float(total)
        return scores

    @torch.no_grad()
    def generate(self, items: list[PromptItem]) -> list[str]:
        inputs = self._inputs(items, "left")
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)


def load_mllm(path: str, dtype: torch.dtype, device: torch.device, attn: str = "sdpa"):
    """(model, processor) from an exported directory or a hub id; any AutoModelForImageTextToText."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    allow_video_processors()  # LLaVA-OneVision processors on machines without torchvision
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    processor = AutoProcessor.from_pretrained(path)
    return model.to(device).eval(), processor
