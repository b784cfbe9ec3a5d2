"""Questions/s of the `likelihood` scorer vs `generate` on the same model and question set, with
their agreement.

python bench/eval_throughput.py                        # SmolLM2-135M LLaVA (tiny tower), CPU
python bench/eval_throughput.py --llm tiny_llama --questions 64 --batch-size 8
Prints one line per scorer and the speed ratio likelihood/generate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import variant_from  # noqa: E402
from llava_ablate.eval.datasets import ClassificationDataset, Sample  # noqa: E402
from llava_ablate.eval.metrics import agreement  # noqa: E402
from llava_ablate.eval.models import MLLMChoiceModel  # noqa: E402
from llava_ablate.eval.questions import build_question_set  # noqa: E402
from llava_ablate.eval.run import item_maker  # noqa: E402
from llava_ablate.eval.scoring import score_units, units_for  # noqa: E402
from llava_ablate.eval_config import EvalCfg, QuestionsCfg, ScoringCfg  # noqa: E402


def digits_dataset(root: Path, n: int) -> ClassificationDataset:
    from sklearn.datasets import load_digits

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    d = load_digits()
    samples = []
    for i in range(n):
        path = root / f"{i}.png"
        arr = (d.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(arr).convert("RGB").resize((64, 64)).save(path)
        samples.append(Sample(str(i), int(d.target[i]), str(path)))
    return ClassificationDataset("digits", names, samples)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--llm", default="smollm2_135m")
    p.add_argument("--vision", default="tiny_clip")
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "llava_ablate"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    variant = variant_from([f"vision={args.vision}", f"llm={args.llm}"], args.cache_dir)
    model = MLLMChoiceModel(
        variant.model.eval(), variant.processor, max_new_tokens=args.max_new_tokens
    )
    with tempfile.TemporaryDirectory() as tmp:
        ds = digits_dataset(Path(tmp), args.questions)
        ecfg = EvalCfg(questions=QuestionsCfg(), scoring=ScoringCfg(batch_size=args.batch_size))
        qs = build_question_set(ds, ecfg.questions)
        make = item_maker(ds, ecfg, variant.processor.image_processor)
        units = units_for(qs.questions, 0)
        make(qs.questions[0])  # warm the image cache / decoder
        preds, rate = [], {}
        for scorer in ("likelihood", "generate"):
            list(score_units(units[: args.batch_size], model, [scorer], make, args.batch_size))
            t0 = time.perf_counter()
            for batch in score_units(units, model, [scorer], make, args.batch_size):
                preds += batch
            rate[scorer] = len(units) / (time.perf_counter() - t0)
    agree = agreement(preds, "likelihood", "generate")
    unparsed = sum(p.pred is None for p in preds if p.scorer == "generate")
    print(
        f"model: vision={args.vision} llm={args.llm}; {len(units)} questions, "
        f"{qs.num_options} options, batch {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )
    for s in ("likelihood", "generate"):
        acc = np.mean([p.correct for p in preds if p.scorer == s])
        print(f"{s:>10}: {rate[s]:7.2f} questions/s  accuracy {acc:.3f}")
    print(
        f"agreement: same choice {agree['same_choice']:.3f}, same correctness "
        f"{agree['same_correctness']:.3f}; generate unparsed {unparsed}/{len(units)}"
    )
    print(f"ratio likelihood/generate: {rate['likelihood'] / rate['generate']:.2f}x")
    return {
        "likelihood_over_generate": rate["likelihood"] / rate["generate"],
        "same_choice": agree["same_choice"],
    }


if __name__ == "__main__":
    main()
