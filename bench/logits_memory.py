"""Peak memory and step time of the loss: full logits (transformers' `labels=` path, before) vs
logits only at the supervised positions (llava_ablate/train/loss.py, now), at Qwen2's vocabulary.

One training step (forward, backward, AdamW) of a 2,048-token packed row through a Qwen2 LM with
the real 152,064-token vocabulary but a small body (hidden 256, 2 layers, bf16): the logits'
memory depends on tokens x vocabulary only, so the body is kept small enough for a CPU. Which
positions are supervised follows the real mixtures (data_recipes/):
- stage 1, LCS-558K in the "plain" format: 576 image placeholders (CLIP-L/336) + a ~16-token
  caption + EOS per sample, the caption and EOS supervised: 17 of 593 tokens (2.9%);
- stage 2, LLaVA-665K: 270 text tokens + 0.939 x 576 image placeholders per sample (811); at
  most the text is supervised (the human turns are text too): 270 of 811 (33%), an upper bound.

Each variant runs in its own process and reports its resident-set high-water mark (ru_maxrss:
torch's CPU allocations are invisible to tracemalloc); a third variant, the head at one position
per row (the same weights, gradients and optimizer state), is the baseline the logits' memory
is measured above. On a GPU the
same step reads torch.cuda.max_memory_allocated.

    python -m bench.logits_memory [--tokens 2048] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VOCAB = 152_064
# (placeholder tokens, supervised tokens) per sample, from the mixtures' declared sizes
STAGES = {"stage1": (576, 17), "stage2": (541, 270)}
VARIANTS = ("one_position", "full", "supervised")


def _row(tokens: int, stage: str) -> dict:
    """A packed row of samples laid end to end: each sample's unsupervised tokens, then its
    supervised ones; positions restart per sample (no attention_mask), as the collator packs."""
    unsup, sup = STAGES[stage]
    labels = torch.full((1, tokens), -100)
    positions = torch.zeros((1, tokens), dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, tokens), generator=gen)
    for start in range(0, tokens, unsup + sup):
        end = min(start + unsup + sup, tokens)
        positions[0, start:end] = torch.arange(end - start)
        # The row's last sample is cut short: its supervised share kept, so the row's is exact.
        n_sup = sup if end - start == unsup + sup else round((end - start) * sup / (unsup + sup))
        labels[0, end - n_sup : end] = ids[0, end - n_sup : end]
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).to(dtype=torch.bfloat16, device=_device()).train()


def _loss(model, batch: dict, variant: str, num_items: torch.Tensor) -> torch.Tensor:
    from llava_ablate.train.loss import supervised_loss

    if variant == "full":  # what the loop ran before
        return model(**batch, use_cache=False, num_items_in_batch=num_items).loss
    if variant == "supervised":
        return supervised_loss(model, batch, num_items)
    # The baseline: the same model, gradients and optimizer state, the head at one position.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, use_cache=False, logits_to_keep=1).logits.float().mean()


def child(variant: str, stage: str, tokens: int, steps: int) -> dict:
    """One variant in this process: peak memory of the first step, the later steps' times."""
    device = _device()
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = {k: v.to(device) for k, v in _row(tokens, stage).items()}
    targets = int((batch["labels"][:, 1:] != -100).sum())
    num_items = torch.tensor(float(targets), device=device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = _loss(model, batch, variant, num_items)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "peak_bytes": peak,
        "step_s": statistics.median(times[1:] or times),
        "targets": targets,
        "loss": loss.item(),
    }


def _run(variant: str, stage: str, tokens: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "bench.logits_memory", "--child", variant, stage]
    cmd += ["--tokens", str(tokens), "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="the first is not timed")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "STAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.tokens, args.steps)))
        return {}
    print(
        f"logits memory: one training step, {args.tokens} tokens, vocabulary {VOCAB:,} "
        f"(Qwen2-shaped LM, hidden 256, bf16, {_device().type}); peak = "
        f"{'max_memory_allocated' if _device().type == 'cuda' else 'RSS high-water'}"
    )
    summary = {}
    header = f"{'':>8} {'supervised':>10} {'variant':>10} {'peak MiB':>9} {'logits MiB':>10}"
    print(header + f" {'logits share':>12} {'step s':>7}")
    for stage in STAGES:
        res = {v: _run(v, stage, args.tokens, args.steps) for v in VARIANTS}
        base = res["one_position"]["peak_bytes"]
        share = {}
        for v in VARIANTS:
            r = res[v]
            logits = max(r["peak_bytes"] - base, 0)
            share[v] = logits / r["peak_bytes"]
            print(
                f"{stage:>8} {r['targets'] / args.tokens:>10.1%} {v:>10} "
                f"{r['peak_bytes'] / 2**20:>9.0f} {logits / 2**20:>10.0f} "
                f"{share[v]:>12.1%} {r['step_s']:>7.2f}"
            )
        # The two paths compute the same loss (tests/test_loss_positions.py checks it exactly).
        gap = abs(res["full"]["loss"] - res["supervised"]["loss"])
        full_logits = res["full"]["peak_bytes"] - base
        new_logits = max(res["supervised"]["peak_bytes"] - base, 1)
        summary[f"{stage}_logits_memory_ratio"] = full_logits / new_logits
        summary[f"{stage}_logits_share_ratio"] = share["full"] / max(share["supervised"], 1e-9)
        summary[f"{stage}_peak_ratio"] = res["full"]["peak_bytes"] / res["supervised"]["peak_bytes"]
        summary[f"{stage}_step_time_ratio"] = res["full"]["step_s"] / res["supervised"]["step_s"]
        summary[f"{stage}_loss_gap"] = gap
    for key, value in summary.items():
        print(f"  {key} = {value:.3g}")
    return summary


if __name__ == "__main__":
    main()
