"""A question's scores must not depend on how questions are batched: not on the batch size,
not on which questions share its batch, not on their order. Harnesses that pad, pool or
normalise across a batch break this silently (arXiv 2603.06578 measured accuracy moving with
batch size and image order). `batch_deviation` scores the same items under several batchings
and returns the largest difference; tests/test_eval_invariance.py holds every supported family
to TOLERANCE (fp32) and shows a deliberately batch-dependent scorer failing it, and the
protocol card records the figure measured on the model it describes."""

from __future__ import annotations

import numpy as np

from llava_ablate.eval.scoring import PromptItem, likelihoods

TOLERANCE = 1e-4  # fp32
GUARANTEE = (
    "Likelihood scores (letters, class names) do not depend on the batch size, on which "
    "questions share a batch, or on the order of the questions (within 1e-4 in fp32): verified "
    "for every supported model family by tests/test_eval_invariance.py, where a deliberately "
    "batch-dependent control scorer fails; all-classes scores are computed one image at a time, "
    "and batched greedy answers equal each prompt's own (tests/test_eval_families.py)."
)


def batchings(n: int, batch_size: int, seed: int = 0) -> dict[str, list[list[int]]]:
    """Ways to batch items 0..n-1: all at once, one at a time in reverse order, consecutive
    batches of `batch_size`, and shuffled batches of `batch_size` (other companions, other
    order)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    return {
        "one batch": [list(range(n))],
        "one at a time, reversed": [[i] for i in reversed(range(n))],
        f"batches of {batch_size}": [list(range(i, min(i + batch_size, n)))
                                     for i in range(0, n, batch_size)],
        f"shuffled batches of {batch_size}": [order[i : i + batch_size]
                                              for i in range(0, n, batch_size)],
    }  # fmt: skip


def scores_batched(model, items: list[PromptItem], scorers: list[str], batches) -> dict:
    """{scorer: [len(items), 26]} with the items scored in `batches` (lists of item indices),
    rows back in item order."""
    out = {s: np.full((len(items), 26), -np.inf) for s in scorers}
    for batch in batches:
        got = likelihoods(model, [items[i] for i in batch], scorers)
        for s in scorers:
            out[s][batch] = got[s]
    return out


def batch_deviation(
    model, items: list[PromptItem], scorers: list[str], batch_size: int = 2, seed: int = 0
) -> dict:
    """{"max_abs_diff": the largest score difference to the one-batch run over every other
    batching (inf where an option's score is finite in one run and not in another),
    "by_batching": that per batching, "items": n}."""
    ways = batchings(len(items), batch_size, seed)
    reference = None
    by: dict[str, float] = {}
    for name, batches in ways.items():
        got = scores_batched(model, items, scorers, batches)
        if reference is None:
            reference = got
            continue
        by[name] = max(_diff(reference[s], got[s]) for s in scorers)
    return {"max_abs_diff": max(by.values(), default=0.0), "by_batching": by, "items": len(items)}


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)):
        return float("inf")
    return float(np.abs(a[finite] - b[finite]).max(initial=0.0))
