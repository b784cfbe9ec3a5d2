"""Loader throughput: our shard stream vs a LLaVA-style lazy JSON + image-folder dataset.

Same samples (JPEG photos-sized images, LLaVA-like conversations), same tokenisation code, same
processor, same DataLoader workers. Reports samples/s delivered to a trainer loop and the
fraction of the trainer's time spent waiting for data when each step also computes for
`--step-ms` milliseconds.

    python -m bench.loader_throughput [--samples 600] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.mixture import open_mixture
from llava_ablate.data.shards import build_mixture
from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader, StreamPlan


def make_source(root: Path, n: int) -> SourceCfg:
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        w, h = rng.choice([(640, 480), (500, 375), (480, 640)])
        noise = (np.random.default_rng(i).random((h // 8, w // 8, 3)) * 255).astype("uint8")
        Image.fromarray(noise).resize((w, h)).save(root / f"images/{i}.jpg", quality=90)
        turns = rng.randint(1, 4)
        convo = []
        for t in range(turns):
            q = (
                "<image>\n" if t == 0 else ""
            ) + "Describe the scene in detail please. " * rng.randint(1, 3)
            convo += [
                {"from": "human", "value": q},
                {"from": "gpt", "value": "The image shows a scene. " * rng.randint(1, 20)},
            ]
        rows.append({"id": str(i), "image": f"images/{i}.jpg", "conversations": convo})
    (root / "data.json").write_text(json.dumps(rows))
    return SourceCfg(name="bench", path=str(root / "data.json"), image_root=str(root))


class LazyJsonDataset(Dataset):
    """The LLaVA (haotian-liu) pattern: the JSON list in memory, one image file opened per item."""

    def __init__(self, src: SourceCfg, encoder: SampleEncoder):
        self.rows = json.loads(Path(src.path).read_text())
        self.root = Path(src.image_root)
        self.encoder = encoder

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        data = (self.root / row["image"]).read_bytes()
        meta = {"id": row["id"], "conversations": row["conversations"], "images": ["img0.jpg"]}
        tok = self.encoder.tokenize({"json": meta, "img0.jpg": data})
        return self.encoder.finish(tok)


def consume(batches, n_batches: int, step_ms: float) -> tuple[float, float, int]:
    """(samples/s, data-wait fraction, samples) for a trainer computing step_ms per batch."""
    it = iter(batches)
    next(it)  # warm-up: worker start-up is not throughput
    wait = 0.0
    samples = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        samples += len(batch["ids"])
        if step_ms:
            time.sleep(step_ms / 1000)
    total = time.perf_counter() - t0
    return samples / total, wait / total, samples


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    from bench.common import tiny_variant

    variant = tiny_variant(image_size=336, patch=14)
    options = EncodeOptions("chat", variant.num_image_tokens, 4096, "truncate", True)
    encoder = SampleEncoder(variant.processor, options)
    collate = Collator(variant.tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_source(root / "raw", args.samples)
        data = DataCfg(
            name="bench", sources=[src], shards_dir=str(root / "shards"), samples_per_shard=100
        )
        t = time.perf_counter()
        build_mixture(data, workers=args.workers)
        build_s = time.perf_counter() - t
        n_batches = args.samples // args.micro // 2
        results = {}
        for step_ms in (0.0, args.step_ms):
            baseline = DataLoader(
                LazyJsonDataset(src, encoder),
                batch_size=args.micro,
                shuffle=True,
                num_workers=args.workers,
                collate_fn=collate,
            )
            stream = ShardStream(
                StreamPlan(open_mixture(data, 0), 0, 256),
                encoder,
                collate,
                BatchingOptions(args.micro, "group", 8),
                rank=0,
                world=1,
                workers=args.workers,
            )
            ours = StreamingLoader(stream, args.workers)
            b = consume(baseline, n_batches, step_ms)
            o = consume(ours, n_batches, step_ms)
            results[step_ms] = (b, o)
    print(
        f"loader throughput ({args.samples} samples, {args.workers} workers, micro {args.micro};"
        f" shard build {build_s:.1f} s)"
    )
    print(
        f"{'trainer step':>14} {'LLaVA lazy JSON':>18} {'ours (shards)':>16} {'ratio':>7}"
        f" {'wait base':>10} {'wait ours':>10}"
    )
    out = {}
    for step_ms, (b, o) in results.items():
        ratio = o[0] / b[0]
        print(
            f"{step_ms:>11.0f} ms {b[0]:>14.1f} s/s {o[0]:>12.1f} s/s {ratio:>6.2f}x"
            f" {b[1]:>10.1%} {o[1]:>10.1%}"
        )
        out[f"samples_per_s_ratio@{step_ms:.0f}ms"] = ratio
        out[f"data_wait_base@{step_ms:.0f}ms"] = b[1]
        out[f"data_wait_ours@{step_ms:.0f}ms"] = o[1]
    return out


if __name__ == "__main__":
    main()
