"""Loader throughput: our shard stream vs a LLaVA-style lazy JSON + image-folder dataset.

Same samples (JPEG photos-sized images, LLaVA-like conversations), same tokenisation code, same
processor, same DataLoader workers. Three loaders side by side: the LLaVA-style lazy loader
(full decode of each original file), our shards as built before the fast image path (original
bytes, full decode, torch's default prefetch) and the fast path (images stored at the tower's
336 px by `data.max_image_side=auto`, JPEG draft decoding, pixel values by data/pixels.py's
lookup table, prefetch 4). Reports the loading's CPU time per sample in-process, samples/s
delivered to a trainer loop, the fraction of the trainer's time spent waiting for data when
each step also computes for `--step-ms` milliseconds, and how close the fast path's processor
output is to the full decode of the originals (PSNR, the test suite's bound: >= 30 dB).

    python -m bench.loader_throughput [--samples 600] [--workers 2] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.images import tower_side
from llava_ablate.data.mixture import check_image_side, open_mixture
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


def cpu_ms_per_sample(batches, n_batches: int) -> float:
    """CPU time (this process, no workers) per delivered sample: what the loading costs,
    whatever else the machine runs; wall-clock figures depend on the load, this one hardly."""
    it = iter(batches)
    next(it)
    samples, t = 0, time.process_time()
    for _ in range(n_batches):
        samples += len(next(it)["ids"])
    return 1000 * (time.process_time() - t) / samples


def closeness(src: SourceCfg, shards: Path, full: SampleEncoder, fast: SampleEncoder, n: int):
    """Lowest PSNR (dB, on [0, 1] intensities) of the fast path's pixel values against the full
    decode of the original files, over the first `n` stored samples."""
    import webdataset as wds

    rows = {r["id"]: r for r in json.loads(Path(src.path).read_text())}
    std = np.array(full.processor.image_processor.image_std).reshape(3, 1, 1)
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    worst = math.inf
    samples = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    for k, sample in enumerate(samples):
        if k == n:
            break
        meta = json.loads(sample["json"])
        original = (Path(src.image_root) / rows[meta["id"]]["image"]).read_bytes()
        a = full.finish(full.tokenize({"json": meta, "img0.jpg": original}))["pixel_values"]
        b = fast.finish(fast.tokenize(sample))["pixel_values"]
        mse = float(((((a - b).numpy()) * std) ** 2).mean())
        worst = min(worst, 10 * math.log10(1 / mse) if mse else math.inf)
    return worst


def _stream_loader(data, encoder, collate, args, prefetch: int) -> StreamingLoader:
    stream = ShardStream(
        StreamPlan(open_mixture(data, 0), 0, 256),
        encoder,
        collate,
        BatchingOptions(args.micro, "group", 8),
        rank=0,
        world=1,
        workers=args.workers,
    )
    return StreamingLoader(stream, args.workers, prefetch_factor=prefetch)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's intra-op threads in this process, e.g. 1 as in a DataLoader worker "
        "(default: torch's own)",
    )
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from bench.common import machine, tiny_variant

    before = machine()

    variant = tiny_variant(image_size=336, patch=14)
    # The LLaVA loaders' way: every image decoded at full size, the processor's own float steps.
    baseline = {"draft_decode": False, "fused_pixels": False}
    full = SampleEncoder(
        variant.processor,
        EncodeOptions("chat", variant.num_image_tokens, 4096, "truncate", True, **baseline),
    )
    fast = SampleEncoder(
        variant.processor, EncodeOptions("chat", variant.num_image_tokens, 4096, "truncate", True)
    )
    side = tower_side(variant.processor.image_processor, pad=True)  # data.max_image_side=auto
    collate = Collator(variant.tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_source(root / "raw", args.samples)
        old = DataCfg(
            name="old", sources=[src], shards_dir=str(root / "old"), samples_per_shard=100
        )
        new = DataCfg(
            name="fast", sources=[src], shards_dir=str(root / "fast"), samples_per_shard=100
        )
        t = time.perf_counter()
        build_mixture(old, workers=args.workers)
        build_old_s = time.perf_counter() - t
        t = time.perf_counter()
        build_mixture(new, workers=args.workers, max_image_side=side)
        build_fast_s = time.perf_counter() - t
        check_image_side(open_mixture(new, 0), side)
        psnr = closeness(src, root / "fast" / "bench", full, fast, 48)
        assert psnr >= 30, f"fast path output differs from the full decode: {psnr:.1f} dB"
        n_batches = args.samples // args.micro // 2
        in_process = dict(args.__dict__, workers=0)
        cpu = [
            cpu_ms_per_sample(
                DataLoader(
                    LazyJsonDataset(src, full),
                    batch_size=args.micro,
                    shuffle=True,
                    collate_fn=collate,
                ),
                n_batches,
            ),
            cpu_ms_per_sample(
                _stream_loader(old, full, collate, argparse.Namespace(**in_process), 2), n_batches
            ),
            cpu_ms_per_sample(
                _stream_loader(new, fast, collate, argparse.Namespace(**in_process), 4), n_batches
            ),
        ]
        results = {}
        for step_ms in (0.0, args.step_ms):
            baseline = DataLoader(
                LazyJsonDataset(src, full),
                batch_size=args.micro,
                shuffle=True,
                num_workers=args.workers,
                collate_fn=collate,
            )
            b = consume(baseline, n_batches, step_ms)
            o = consume(_stream_loader(old, full, collate, args, 2), n_batches, step_ms)
            f = consume(_stream_loader(new, fast, collate, args, 4), n_batches, step_ms)
            results[step_ms] = (b, o, f)
    after = machine()
    print(f"machine: {after['cpu']}, nproc {after['nproc']}; load average (1 min) "
          f"{before['load_1_5_15'][0]:.2f} before, {after['load_1_5_15'][0]:.2f} after")  # fmt: skip
    print(
        f"loader throughput ({args.samples} samples, {args.workers} workers, micro {args.micro};"
        f" shard build {build_old_s:.1f} s originals, {build_fast_s:.1f} s at {side} px;"
        f" fast path vs full decode: >= {psnr:.1f} dB PSNR)"
    )
    print(
        f"{'trainer step':>14} {'LLaVA lazy':>12} {'old shards':>12} {'fast path':>12}"
        f" {'fast/lazy':>10} {'fast/old':>9} {'wait lazy':>10} {'wait old':>9} {'wait fast':>10}"
    )
    print(
        f"{'CPU per sample':>14} {cpu[0]:>7.2f} ms {cpu[1]:>7.2f} ms {cpu[2]:>7.2f} ms"
        f" {cpu[0] / cpu[2]:>9.2f}x {cpu[1] / cpu[2]:>8.2f}x   (in-process, CPU time: hardly"
        " load-dependent)"
    )
    out = {"fast_psnr_db": psnr, "cpu_ratio_lazy_over_fast": cpu[0] / cpu[2], "machine": after}
    out.update(cpu_ms_lazy=cpu[0], cpu_ms_old=cpu[1], cpu_ms_fast=cpu[2])
    for step_ms, (b, o, f) in results.items():
        # With no step the trainer does nothing but wait: its wait fraction says nothing.
        waits = [f"{w:.1%}" if step_ms else "-" for w in (b[1], o[1], f[1])]
        print(
            f"{step_ms:>11.0f} ms {b[0]:>8.1f} s/s {o[0]:>8.1f} s/s {f[0]:>8.1f} s/s"
            f" {f[0] / b[0]:>9.2f}x {f[0] / o[0]:>8.2f}x {waits[0]:>10} {waits[1]:>9} {waits[2]:>10}"
        )
        out[f"samples_per_s_ratio@{step_ms:.0f}ms"] = f[0] / b[0]
        out[f"fast_vs_old_shards@{step_ms:.0f}ms"] = f[0] / o[0]
        out[f"old_shards_ratio@{step_ms:.0f}ms"] = o[0] / b[0]
        out[f"data_wait_base@{step_ms:.0f}ms"] = b[1]
        out[f"data_wait_old@{step_ms:.0f}ms"] = o[1]
        out[f"data_wait_ours@{step_ms:.0f}ms"] = f[1]
    return out


if __name__ == "__main__":
    main()
