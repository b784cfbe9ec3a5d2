"""`name_likelihood` with one prefix forward + all options on copies of its KV cache, against the
obvious baseline: one full forward over image + prompt + answer per option.

python bench/name_scoring.py                   # SmolLM2-135M LLaVA (tiny tower), CPU
python bench/name_scoring.py --llm tiny_llama --questions 32

Prints questions/s of each, the ratio, and the largest score difference (they must agree).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import digits_dataset, variant_from  # noqa: E402
from llava_ablate.eval.models import MLLMChoiceModel  # noqa: E402
from llava_ablate.eval.questions import LETTERS, build_question_set  # noqa: E402
from llava_ablate.eval.run import item_maker  # noqa: E402
from llava_ablate.eval.scoring import PromptItem  # noqa: E402
from llava_ablate.eval_config import EvalCfg, QuestionsCfg  # noqa: E402

PROMPT = "What is shown in this image?"


@torch.no_grad()
def naive_scores(model: MLLMChoiceModel, item: PromptItem) -> np.ndarray:
    """One full forward per option (prompt + answer, right-padded, image repeated)."""
    prompt = PromptItem(item.question, item.image, PROMPT)
    base = model._inputs([prompt], "right")
    n = base["input_ids"].shape[1]
    answers = [model.answer_ids(o) for o in item.question.options]
    width = max(map(len, answers))
    k = len(answers)
    ids = torch.full((k, n + width), model.processor.tokenizer.pad_token_id or 0)
    mask = torch.zeros_like(ids)
    for i, a in enumerate(answers):
        ids[i, :n], ids[i, n : n + len(a)] = base["input_ids"][0], torch.tensor(a)
        mask[i, : n + len(a)] = 1
    logp = torch.log_softmax(
        model.model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=base["pixel_values"].expand(k, -1, -1, -1),
        ).logits.float(),
        dim=-1,
    )
    out = np.full(26, -np.inf)
    for i, a in enumerate(answers):
        out[i] = sum(float(logp[i, n - 1 + j, t]) for j, t in enumerate(a))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--llm", default="smollm2_135m")
    p.add_argument("--vision", default="tiny_clip")
    p.add_argument("--questions", type=int, default=24)
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "llava_ablate"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    variant = variant_from([f"vision={args.vision}", f"llm={args.llm}"], args.cache_dir)
    model = MLLMChoiceModel(variant.model.eval(), variant.processor, names_prompt=PROMPT)
    with tempfile.TemporaryDirectory() as tmp:
        ds = digits_dataset(Path(tmp), args.questions)
        ecfg = EvalCfg(questions=QuestionsCfg())
        qs = build_question_set(ds, ecfg.questions)
        make = item_maker(ds, ecfg, variant.processor.image_processor)
        items = [make(q) for q in qs.questions]
        model.name_scores(items[:1]), naive_scores(model, items[0])  # warm-up
        t0 = time.perf_counter()
        cached = model.name_scores(items)
        t_cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive = np.stack([naive_scores(model, it) for it in items])
        t_naive = time.perf_counter() - t0
    k = qs.num_options
    diff = float(np.abs(cached[:, :k] - naive[:, :k]).max())
    same = float(np.mean(cached[:, :k].argmax(1) == naive[:, :k].argmax(1)))
    print(
        f"model: vision={args.vision} llm={args.llm}; {len(items)} questions x {k} options "
        f"({LETTERS[0]}-{LETTERS[k - 1]}), torch threads {torch.get_num_threads()}"
    )
    print(f"  naive (one forward per option): {len(items) / t_naive:7.2f} questions/s")
    print(f"  shared prefix + KV cache:       {len(items) / t_cached:7.2f} questions/s")
    print(
        f"ratio cached/naive: {t_naive / t_cached:.2f}x; max |score diff| {diff:.1e}, same argmax {same:.3f}"
    )
    return {"cached_over_naive": t_naive / t_cached, "max_score_diff": diff}


if __name__ == "__main__":
    main()
