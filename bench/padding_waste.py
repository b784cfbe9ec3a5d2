"""Padding waste and tokens/s with and without (modality, length) grouping.

Lengths follow a LLaVA-665K-like mix, scaled down 4x for a CPU: 90% image samples (144 image
tokens + lognormal text, median ~40, long tail) and 10% text-only (lognormal, median ~80). The
batches come from the project's own `micro_batches` (the code the trainer uses); tokens/s runs
a small Llama forward+backward on each padded batch and counts only real tokens.

    python -m bench.padding_waste [--samples 2048] [--micro 8]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava_ablate.data.encode import Tokenized
from llava_ablate.data.stream import BatchingOptions, micro_batches


def lengths(n: int, seed: int = 0) -> list[tuple[bool, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.9:
            out.append((True, 144 + min(int(rng.lognormvariate(3.7, 0.8)), 600)))
        else:
            out.append((False, min(int(rng.lognormvariate(4.4, 0.7)), 700)))
    return out


def batches(samples, micro: int, group: bool):
    items = [
        Tokenized(str(i), [0] * n, [0] * n, [b""] if img else [])
        for i, (img, n) in enumerate(samples)
    ]
    opts = BatchingOptions(micro, group, 32)
    return list(micro_batches(iter(items), opts, random.Random(0)))


def tokens_per_s(batch_list, model, limit: int | None) -> float:
    real = 0
    t0 = time.perf_counter()
    for batch in batch_list[:limit]:  # limit None = every batch
        width = max(x.length for x in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(batch):
            mask[i, : x.length] = 1
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        real += int(mask.sum())
    return real / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--timed-batches", type=int, default=None, help="default: all")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
        )
    )
    samples = lengths(args.samples)
    results = {}
    for group in (False, True):
        bl = batches(samples, args.micro, group)
        padded = sum(len(b) * max(x.length for x in b) for b in bl)
        real = sum(x.length for b in bl for x in b)
        random.Random(1).shuffle(bl)  # time a random subset: the same mix of batches as training
        results[group] = (1 - real / padded, tokens_per_s(bl, model, args.timed_batches))
    (w0, t0), (w1, t1) = results[False], results[True]
    print(f"padding waste ({args.samples} samples, micro {args.micro}, LLaVA-665K-like lengths)")
    print(f"{'':>22} {'no grouping':>12} {'grouped':>10} {'ratio':>8}")
    print(f"{'padded token fraction':>22} {w0:>12.1%} {w1:>10.1%} {w1 / w0:>7.2f}x")
    print(f"{'real tokens/s':>22} {t0:>12,.0f} {t1:>10,.0f} {t1 / t0:>7.2f}x")
    return {
        "padding_waste_ungrouped": w0,
        "padding_waste_grouped": w1,
        "tokens_per_s_ratio": t1 / t0,
    }


if __name__ == "__main__":
    main()
