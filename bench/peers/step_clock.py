"""A transformers `TrainerCallback` that times the Hugging Face-based peers' steps.

Used by the peer scripts beside it (TRL's SFTTrainer, LLaMA-Factory); imports transformers and
torch only, so it runs in their venvs. It records per optimizer step the time it ended and what
its batch held (samples, non-padding tokens, supervised tokens: labels the shifted causal-LM loss
predicts, as our loop counts them), counted as the trainer's DataLoader collates each batch
(`dataloader_num_workers=0`, the trainers' default, so collation runs in this process); and the
losses the trainer logs. Each rank writes `<out>/rank<RANK>.json` when training ends.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path

from transformers import TrainerCallback


def batch_counts(batch) -> dict[str, int]:
    labels = batch["labels"]
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None and mask.dim() == 2 else int(labels.numel())
    return {
        "samples": int(labels.shape[0]),
        "tokens": tokens,
        "supervised": int((labels[:, 1:] != -100).sum()),
    }


class StepClock(TrainerCallback):
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.pending: deque[dict] = deque()  # batches collated, not yet stepped (prefetch)
        self.steps: list[dict] = []
        self.losses: list[dict] = []
        self.t0 = time.perf_counter()

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if args.dataloader_num_workers:
            raise ValueError("StepClock counts batches as they are collated: needs workers=0")
        # accelerate's DataLoaderShard iterates the DataLoader it wraps (`base_dataloader`)
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
        collate = loader.collate_fn

        def counting(examples):
            batch = collate(examples)
            self.pending.append(batch_counts(batch))
            return batch

        loader.collate_fn = counting
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        counts = self.pending.popleft() if self.pending else {}
        self.steps.append({"step": state.global_step, "t": time.perf_counter(), **counts})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append({"step": state.global_step, "loss": float(logs["loss"])})

    def on_train_end(self, args, state, control, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": rank, "t0": self.t0, "steps": self.steps, "losses": self.losses}
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(record))
