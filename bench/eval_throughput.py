"""Questions/s of our scorers against the peers' way of scoring, on the same model and the same
frozen 26-option questions (mini-classify's test split, the demo's question set).

Peers, written here as plain Hugging Face code (model.generate with the processor's chat
template), not through our scorer:
- VLMClassifier: `generate`, batch 8, max_new_tokens=64, the answer parsed from the text;
- lmms-eval `llava_hf`: `generate`, batch 1 (its default), max_new_tokens=64.
Ours: `likelihood` (the default: one forward, the next-token log-probs of the 26 letters),
`name_likelihood` (the summed log-probs of each option's name) and `generate` (batch 8,
16 new tokens, the default). Prints questions/s, the choices' agreement and the ratio of our
default scorer to each peer.

python bench/eval_throughput.py                     # SmolLM2-135M LLaVA (tiny tower), CPU
python bench/eval_throughput.py --llm tiny_llama --questions 64
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import variant_from  # noqa: E402
from llava_ablate.base.chat_templates import processor_messages  # noqa: E402
from llava_ablate.eval.datasets import ClassificationDataset  # noqa: E402
from llava_ablate.eval.layouts import load_dataset  # noqa: E402
from llava_ablate.eval.models import MLLMChoiceModel  # noqa: E402
from llava_ablate.eval.parse import parse_choice  # noqa: E402
from llava_ablate.eval.questions import Question, build_question_set  # noqa: E402
from llava_ablate.eval.run import item_maker  # noqa: E402
from llava_ablate.eval.scoring import PromptItem, score_units, units_for  # noqa: E402
from llava_ablate.eval_config import DatasetCfg, EvalCfg, QuestionsCfg, ScoringCfg  # noqa: E402

OURS = ("likelihood", "name_likelihood", "generate")
DEFAULT = "likelihood"  # ScoringCfg's default scorer


@dataclass(frozen=True)
class PeerPath:
    name: str
    batch_size: int
    max_new_tokens: int


PEERS = (
    PeerPath("vlmclassifier_generate_b8", 8, 64),
    PeerPath("lmms_eval_llava_hf_b1", 1, 64),
)


def mini_classify(cache_dir: str | Path) -> ClassificationDataset:
    """The demo's evaluation set (30 classes: 26-option questions), generated offline once."""
    root = Path(cache_dir) / "mini_classify"
    cfg = DatasetCfg(
        kind="image_folder",
        root=str(root),
        split="test",
        builtin="mini_classify",
        classnames=str(root / "classes.csv"),
    )
    return load_dataset("mini_classify", cfg)


@torch.no_grad()
def peer_generate(model, processor, items: list[PromptItem], peer: PeerPath) -> list[str]:
    """What the peers run: the processor's chat template, left padding, greedy `generate`."""
    tok = processor.tokenizer
    old_side, tok.padding_side = tok.padding_side, "left"
    texts = []
    try:
        out = []
        for start in range(0, len(items), peer.batch_size):
            batch = items[start : start + peer.batch_size]
            texts = [
                processor.apply_chat_template(
                    processor_messages(it.text), add_generation_prompt=True
                )
                for it in batch
            ]
            enc = processor(
                images=[it.image for it in batch], text=texts, padding=True, return_tensors="pt"
            ).to(model.device)
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
            gen = model.generate(**enc, max_new_tokens=peer.max_new_tokens, do_sample=False)
            new = gen[:, enc["input_ids"].shape[1] :]
            out += processor.batch_decode(new, skip_special_tokens=True)
        return out
    finally:
        tok.padding_side = old_side


def measure(
    model,
    processor,
    ds: ClassificationDataset,
    questions: list[Question],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    scorers: tuple[str, ...] = OURS,
    peers: tuple[PeerPath, ...] = PEERS,
) -> dict:
    """{"rate": {path: questions/s}, "choices": {path: [letter|None per question]}}.

    Each path first scores a warm-up batch (not timed); then all questions, timed."""
    ecfg = EvalCfg(questions=QuestionsCfg(), scoring=ScoringCfg(batch_size=batch_size))
    make = item_maker(ds, ecfg, processor.image_processor)
    ours = MLLMChoiceModel(model, processor, max_new_tokens=max_new_tokens)
    units = units_for(questions, 0)
    rate, choices = {}, {}
    for scorer in scorers:
        warm = units[:batch_size]
        list(score_units(warm, ours, [scorer], make, batch_size))
        t0 = time.perf_counter()
        preds = [p for b in score_units(units, ours, [scorer], make, batch_size) for p in b]
        rate[scorer] = len(units) / (time.perf_counter() - t0)
        print(f"  {scorer}: {rate[scorer]:.2f} questions/s", flush=True)
        by_qid = {p.qid: p.pred for p in preds}
        choices[scorer] = [by_qid[q.qid] for q in questions]
    items = [make(q) for q in questions]  # the same prompts and images our scorers read
    for peer in peers:
        peer_generate(model, processor, items[: peer.batch_size], peer)
        t0 = time.perf_counter()
        texts = peer_generate(model, processor, items, peer)
        rate[peer.name] = len(items) / (time.perf_counter() - t0)
        print(f"  {peer.name}: {rate[peer.name]:.2f} questions/s", flush=True)
        parsed = zip(texts, questions, strict=True)
        choices[peer.name] = [parse_choice(t, q.options) for t, q in parsed]
    return {"rate": rate, "choices": choices}


def prefill_sharing(
    model, processor, ds: ClassificationDataset, questions: list[Question], rotations: int = 3
) -> dict:
    """Both likelihood scorers over `rotations` option orders: the previous computation (letters
    batched, one prefill per item for the names) against `choice_scores` (one image prefix per
    question, the letter and name scorers sharing the prompt's forward)."""
    ecfg = EvalCfg(questions=QuestionsCfg())
    make = item_maker(ds, ecfg, processor.image_processor)
    ours = MLLMChoiceModel(model, processor)
    units = units_for(questions, rotations)
    items = [make(u.question.rotated(u.shift)) for u in units]
    ours.choice_scores(items[:rotations], ["likelihood", "name_likelihood"])  # warm-up
    t0 = time.perf_counter()
    letters = ours.letter_scores(items)
    names = np.concatenate([ours.name_scores([it]) for it in items])
    t_before = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = ours.choice_scores(items, ["likelihood", "name_likelihood"])
    t_shared = time.perf_counter() - t0
    finite = np.isfinite(names)
    diff = max(
        float(np.abs(shared["likelihood"] - letters).max()),
        float(np.abs(shared["name_likelihood"][finite] - names[finite]).max()),
    )
    print(
        f"both likelihood scorers, {rotations} rotations, {len(questions)} questions: "
        f"previous {len(questions) / t_before:.2f} q/s, shared prefills "
        f"{len(questions) / t_shared:.2f} q/s ({t_before / t_shared:.2f}x), "
        f"max |score diff| {diff:.1e}"
    )
    return {"shared_over_previous": t_before / t_shared, "max_score_diff": diff}


def agreement(choices: dict[str, list], a: str, b: str) -> float:
    """Fraction of questions where two paths chose the same letter (both unparsed counts)."""
    pairs = list(zip(choices[a], choices[b], strict=True))
    return sum(x == y for x, y in pairs) / len(pairs)


def report(result: dict, questions: list[Question]) -> dict:
    rate, choices = result["rate"], result["choices"]
    truth = [q.answer for q in questions]
    print(f"{'path':>28} {'questions/s':>12} {'accuracy':>9} {'unparsed':>9}")
    for path, r in rate.items():
        got = choices[path]
        acc = sum(g == t for g, t in zip(got, truth, strict=True)) / len(truth)
        print(f"{path:>28} {r:12.2f} {acc:9.3f} {sum(g is None for g in got):9d}")
    paths = list(rate)
    print("agreement of choices (same letter):")
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            print(f"  {a} vs {b}: {agreement(choices, a, b):.3f}")
    figures = {}
    for peer in [p for p in paths if p not in OURS]:
        ratio = rate[DEFAULT] / rate[peer]
        print(f"ratio {DEFAULT}/{peer}: {ratio:.2f}x")
        figures[f"{DEFAULT}_over_{peer}"] = ratio
        figures[f"same_choice_{DEFAULT}_vs_{peer}"] = agreement(choices, DEFAULT, peer)
    return figures


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--llm", default="smollm2_135m")
    p.add_argument("--vision", default="tiny_clip")
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16, help="our generate scorer")
    p.add_argument(
        "--prefill-sharing",
        type=int,
        default=0,
        metavar="N",
        help="only: both likelihood scorers on N questions x 3 rotations, "
        "previous vs shared prefills",
    )
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "llava_ablate"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    variant = variant_from([f"vision={args.vision}", f"llm={args.llm}"], args.cache_dir)
    ds = mini_classify(args.cache_dir)
    qs = build_question_set(ds, QuestionsCfg())
    questions = qs.questions[: args.questions]
    print(
        f"model: vision={args.vision} llm={args.llm}; {len(questions)} mini-classify questions, "
        f"{qs.num_options} options; our batch {args.batch_size}; torch threads "
        f"{torch.get_num_threads()}, {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    if args.prefill_sharing:
        model = variant.model.eval()
        return prefill_sharing(model, variant.processor, ds, questions[: args.prefill_sharing])
    result = measure(
        variant.model.eval(),
        variant.processor,
        ds,
        questions,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    return report(result, questions)


if __name__ == "__main__":
    main()
