"""Padding waste and tokens/s of `data.batching` none / group / pack on the same samples.

Lengths follow a LLaVA-665K-like mix, scaled down 4x for a CPU: 90% image samples (144 image
tokens + lognormal text, median ~40, long tail) and 10% text-only (lognormal, median ~80), cut
at max_length 512 (LLaVA-1.5's 2048 / 4) as the encoder would. The batches come from the
project's own `micro_batches` and `Collator` (the code the trainer uses); tokens/s runs a small
Llama forward+backward on each padded batch (packed rows: position_ids restarting per sample,
no attention_mask, as the loop feeds them) and counts only real tokens.

    python -m bench.padding_waste [--samples 2048] [--micro 8]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava_ablate.data.batching import BatchingOptions, micro_batches
from llava_ablate.data.encode import Collator, Tokenized


def lengths(n: int, seed: int = 0) -> list[tuple[bool, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.9:
            out.append((True, 144 + min(int(rng.lognormvariate(3.7, 0.8)), 600)))
        else:
            out.append((False, min(int(rng.lognormvariate(4.4, 0.7)), 700)))
    return out


MAX_LENGTH = 512


def batches(samples, micro: int, mode: str) -> list[dict]:
    """The collated micro-batches (input_ids, labels, attention_mask or position_ids)."""
    items = [
        Tokenized(str(i), [0] * n, [0] * n, [b""] if img else [])
        for i, (img, n) in enumerate(samples)
    ]
    opts = BatchingOptions(micro, mode, 32, MAX_LENGTH)
    collate = Collator(pad_token_id=0, packed=mode == "pack")
    out = []
    for batch in micro_batches(iter(items), opts, random.Random(0)):
        rows = [
            [
                {
                    "id": x.id,
                    "input_ids": torch.ones(x.length, dtype=torch.long),
                    "labels": torch.ones(x.length, dtype=torch.long),
                }
                for x in r
            ]
            for r in batch
        ]
        out.append(collate.rows(rows))
    return out


def tokens_per_s(batch_list, model, limit: int | None) -> float:
    real = 0
    t0 = time.perf_counter()
    for batch in batch_list[:limit]:  # limit None = every batch
        keys = ("input_ids", "labels", "attention_mask", "position_ids")
        out = model(**{k: batch[k] for k in keys if k in batch}, use_cache=False)
        out.loss.backward()
        real += batch["real_tokens"]
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
    samples = [(img, min(n, MAX_LENGTH)) for img, n in lengths(args.samples)]
    waste, speed = {}, {}
    for mode in ("none", "group", "pack"):
        bl = batches(samples, args.micro, mode)
        padded = sum(b["input_ids"].numel() for b in bl)
        waste[mode] = 1 - sum(b["real_tokens"] for b in bl) / padded
        random.Random(1).shuffle(bl)  # time a random subset: the same mix of batches as training
        speed[mode] = tokens_per_s(bl, model, args.timed_batches)
    print(
        f"padding waste ({args.samples} samples, micro {args.micro}, max_length {MAX_LENGTH}, "
        "LLaVA-665K-like lengths)"
    )
    print(f"{'':>22} {'none':>10} {'group':>10} {'pack':>10} {'pack/group':>11}")
    w, t = waste, speed
    print(
        f"{'padded token fraction':>22} {w['none']:>10.1%} {w['group']:>10.1%} "
        f"{w['pack']:>10.1%} {w['pack'] / w['group']:>10.2f}x"
    )
    print(
        f"{'real tokens/s':>22} {t['none']:>10,.0f} {t['group']:>10,.0f} {t['pack']:>10,.0f} "
        f"{t['pack'] / t['group']:>10.2f}x"
    )
    return {
        "padding_waste_ungrouped": w["none"],
        "padding_waste_grouped": w["group"],
        "padding_waste_packed": w["pack"],
        "tokens_per_s_ratio": t["group"] / t["none"],
        "tokens_per_s_pack_vs_group": t["pack"] / t["group"],
    }


if __name__ == "__main__":
    main()
