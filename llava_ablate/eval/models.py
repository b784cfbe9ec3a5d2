"""MLLMs as ChoiceModels: our exports and public Hugging Face models, through their processors'
chat templates.

The letter each option is answered with is found by rendering the chat template with an
assistant turn holding just that letter and taking the first token after the generation prompt:
vicuna_v1 answers " A" (space-prefixed), ChatML "A". Reading a fixed `tokenizer("A")` instead
would silently score the wrong token for half the templates.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import replace

import numpy as np
import torch

from llava_ablate.base.chat_templates import processor_messages, render
from llava_ablate.base.mcq import LETTERS
from llava_ablate.base.video_processors import allow_video_processors
from llava_ablate.eval.families import family_for
from llava_ablate.eval.open_answer import OpenAnswerMatcher
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


class MLLMChoiceModel:
    """Any image-text-to-text model + processor (Llava, LLaVA-OneVision, Qwen2-VL, ...)."""

    scorers = ("likelihood", "name_likelihood", "generate", "all_classes", "open")

    def __init__(
        self,
        model,
        processor,
        *,
        max_new_tokens: int = 16,
        names_prompt: str | None = None,
        names_answer: str = "{option}",
        open_prompt: str = "What is the main object in this image? Answer with its name only.",
        synonyms: dict[str, list[str]] | None = None,
    ):
        self.model, self.processor = model, processor
        self.open_prompt, self.synonyms = open_prompt, synonyms or {}
        self.classnames: list[str] = []
        self.matcher = OpenAnswerMatcher([])
        self.family = family_for(model.config.model_type)
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
        return self._encode([it.image for it in items], texts, side)

    def _encode(self, images: list, texts: list[str], side: str) -> dict:
        # As a call argument: some processors (InternVL's) set their own side per call.
        enc = self.processor(
            images=self.family.images_arg(images),
            text=texts,
            padding=True,
            padding_side=side,
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
        # Right padding keeps every row's positions exact; the head reads each row's last one.
        inputs = self._inputs(items, "right", self.answer_prefix)
        logits, _ = self._logits_at(inputs["attention_mask"].sum(dim=1) - 1, **inputs)
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
        return self.choice_scores(items, ["name_likelihood"])["name_likelihood"]

    @torch.no_grad()
    def choice_scores(self, items: list[PromptItem], scorers: list[str]) -> dict[str, np.ndarray]:
        """`letter_scores` and/or `name_scores` with one prefill per distinct prompt: the items
        of one question (its option rotations) share the forward over the image and the text
        before the options; the likelihood and name scorers share the prompt's forward when
        their prompts are the same text; the name answers run on copies of its KV cache.
        `score_units` calls this whenever it saves work; every score is the same forward's
        arithmetic split at other points (tests/test_eval_prefill.py). The number of forwards
        depends on the config and on how many rotations share a batch, never on the images or
        answers: the training hook (no rotations) keeps ZeRO-3 ranks in step."""
        out = {s: np.full((len(items), 26), -np.inf) for s in scorers}
        for rows in _same_question(items):
            uses: dict[str, list[tuple[int, str]]] = {}  # prompt text -> [(row, scorer)]
            for r in rows:
                mcq = render(self.processor, processor_messages(items[r].text), True)
                if "likelihood" in scorers:
                    uses.setdefault(mcq + self.answer_prefix, []).append((r, "likelihood"))
                if "name_likelihood" in scorers:
                    text = mcq if self.names_prompt is None else render(
                        self.processor, processor_messages(self.names_prompt), True
                    )  # fmt: skip
                    uses.setdefault(text, []).append((r, "name_likelihood"))
            texts = list(uses)
            prefills = self._prefills(items[rows[0]].image, texts)
            for i, (last, cache, length, offset) in enumerate(prefills):
                logp = torch.log_softmax(last.float(), dim=-1)
                names = [r for r, s in uses[texts[i]] if s == "name_likelihood"]
                for r, scorer in uses[texts[i]]:
                    if scorer == "likelihood":
                        out[scorer][r] = logp[self.letter_ids].cpu().numpy()
                    else:  # the last user of the cache may consume it; the others copy it
                        own = cache if r == names[-1] else copy.deepcopy(cache)
                        answers = [self.names_answer.format(option=o, letter=LETTERS[i])
                                   for i, o in enumerate(items[r].question.options)]  # fmt: skip
                        out[scorer][r] = self._answers_on(logp, own, length, offset, answers)
        return out

    def with_classes(self, classnames: list[str]) -> MLLMChoiceModel:
        """The dataset's classes, for `all_classes` and `open` (which see no options)."""
        self.classnames = list(classnames)
        self.matcher = OpenAnswerMatcher(self.classnames, self.synonyms)
        return self

    @torch.no_grad()
    def classify_all(self, items: list[PromptItem]) -> list[str]:
        """The likeliest class name over every class as the answer to `open_prompt`
        (VLMClassifier's probabilistic inference without options): one prefill per image,
        then the names 26 at a time on copies of its KV cache; ties go to the first class."""
        if not self.classnames:
            raise RuntimeError("call with_classes(classnames) before classify_all")
        prompt = render(self.processor, processor_messages(self.open_prompt), True)
        out = []
        for it in items:
            ((last, cache, length, offset),) = self._prefills(it.image, [prompt])
            logp = torch.log_softmax(last.float(), dim=-1)
            scores = []
            for start in range(0, len(self.classnames), 26):
                chunk = self.classnames[start : start + 26]
                own = cache if start + 26 >= len(self.classnames) else copy.deepcopy(cache)
                scores.extend(self._answers_on(logp, own, length, offset, chunk)[: len(chunk)])
            out.append(self.classnames[int(np.argmax(scores))])
        return out

    def open_answers(self, items: list[PromptItem]) -> list[tuple[str, str | None]]:
        """(the greedy answer to `open_prompt`, the class it names or None) per item."""
        texts = self.generate([replace(it, text=self.open_prompt) for it in items])
        return [(t, self.matcher.match(t)) for t in texts]

    def _prefills(self, image, texts: list[str]):
        """Yield (logits after the last token, KV cache, length, position offset) of each
        prompt, in order; the text after a prompt sits at positions length + offset + j.

        One forward over the prompts' common prefix (image included), then their differing
        tails as one right-padded batch on copies of its cache; each prompt's cache is then
        cut to its own length, so what follows sees exactly its prompt's keys and values.
        Positions come from the family (explicit for multimodal RoPE, else from the cache)."""
        enc = self._encode([image] * len(texts), texts, "right")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions, offsets = self.family.positions(self.model, enc)
        tokens, images = _token_aligned(enc)
        lengths = mask.sum(dim=1).tolist()
        split = lengths[0]
        if len(texts) > 1:
            split = _common_prefix(ids, min(lengths) - 1)
            if (ids[:, split:] == self.model.config.image_token_id).any():
                for text in texts:  # the image differs in place: nothing shareable
                    yield from self._prefills(image, [text])
                return
        pre = self.model(
            **{k: v[:1, :split] for k, v in tokens.items()},
            **self.family.one_image(images, ids, 0, self.model.config),
            **_positions(positions, slice(0, 1), slice(0, split)),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(pre, "cache", None) or pre.past_key_values
        if len(texts) == 1:
            yield pre.logits[0, -1], cache, split, int(offsets[0])
            return
        tails = [n - split for n in lengths]
        width = max(tails)
        cache.batch_repeat_interleave(len(texts))
        rest = {k: v[:, split : split + width] for k, v in tokens.items() if k != "attention_mask"}
        last, cache = self._logits_at(
            torch.tensor(tails) - 1,
            **rest,
            attention_mask=mask[:, : split + width],
            **_positions(positions, slice(None), slice(split, split + width)),
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        for i, n in enumerate(tails):
            own = copy.deepcopy(cache) if i < len(texts) - 1 else cache
            own.batch_select_indices(torch.tensor([i], device=self.device))
            if width > n:
                own.crop(n - width)  # drop the right padding of this prompt's tail
            yield last[i], own, split + n, int(offsets[i])

    def _logits_at(self, positions: torch.Tensor, **inputs):
        """(logits at one position per row, the KV cache): the head runs on those positions
        only (a full [B, T, vocab] logit tensor would dwarf the model on 150k vocabularies)."""
        rows = torch.arange(len(positions))
        base = getattr(self.model, self.model.base_model_prefix, None)
        head = self.model.get_output_embeddings()
        if base is not None and head is not None:
            out = base(**inputs)
            logits = head(out.last_hidden_state[rows, positions])
        else:
            out = self.model(**inputs)
            logits = out.logits[rows, positions]
        return logits, getattr(out, "cache", None) or out.past_key_values

    def _answers_on(
        self, first: torch.Tensor, cache, length: int, offset: int, texts: list[str]
    ) -> np.ndarray:
        """Summed log P(each answer text | prompt) from the prompt's next-token log-probs and
        its KV cache (consumed): all (at most 26) answers at once on copies of the cache."""
        answers = [self.answer_ids(t) for t in texts]
        width = max(len(a) for a in answers)
        pad = self.processor.tokenizer.pad_token_id or 0
        ids = torch.tensor([a + [pad] * (width - len(a)) for a in answers], device=self.device)
        mask = (torch.arange(width) < torch.tensor([len(a) for a in answers])[:, None]).long()
        cache.batch_repeat_interleave(len(answers))
        prefix = torch.ones(len(answers), length, dtype=torch.long)
        at = torch.arange(length, length + width).expand(len(answers), -1) + offset
        cont = self.model(
            input_ids=ids,
            attention_mask=torch.cat([prefix, mask], dim=1).to(self.device),
            position_ids=self.family.text_positions(at.to(self.device)),
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        # Token j of each answer is predicted by position j-1 (the prompt's last for j=0).
        logp = torch.log_softmax(cont.logits[:, :-1].float(), dim=-1)
        scores = np.full(26, -np.inf)
        for k, a in enumerate(answers):
            total = first[a[0]]
            if len(a) > 1:
                total = total + logp[k, torch.arange(len(a) - 1), torch.tensor(a[1:])].sum()
            scores[k] = float(total)
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
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    family_for(AutoConfig.from_pretrained(path).model_type, where=path)  # before any weights
    allow_video_processors()  # processors of video-capable families without torchvision
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    processor = AutoProcessor.from_pretrained(path)
    return model.to(device).eval(), processor


def _same_question(items: list[PromptItem]) -> list[list[int]]:
    """Rows grouped by question (its option rotations), in order; a group shares one image."""
    groups: dict[tuple, list[int]] = {}
    for r, it in enumerate(items):
        key = (it.question.qid, it.image.size, it.image.mode, it.image.tobytes())
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _common_prefix(ids: torch.Tensor, limit: int) -> int:
    """How many leading tokens every row shares (at most `limit`)."""
    differs = (ids[:, :limit] != ids[:1, :limit]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else limit


def _token_aligned(enc: dict) -> tuple[dict, dict]:
    """(the inputs with one entry per token: input_ids, attention_mask, token_type_ids, ...;
    the rest: the images' pixel values, sizes, grids)."""
    shape = enc["input_ids"].shape
    tokens = {
        k: v
        for k, v in enc.items()
        if v.shape == shape and not torch.is_floating_point(v)  # not a [n, d] of patches
    }
    return tokens, {k: v for k, v in enc.items() if k not in tokens}


def _positions(positions: torch.Tensor | None, rows: slice, cols: slice) -> dict:
    """`position_ids` of those rows and tokens ([B, T] or [3, B, T]), if the family gives any."""
    return {} if positions is None else {"position_ids": positions[..., rows, cols]}
