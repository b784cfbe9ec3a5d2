"""What verifying every shard's sha256 while streaming costs the loader.

The stream hashes each shard as it reads it (`data/stream.py` `HashingReader`) and holds a
shard's samples back until the hash matches the manifest. This bench reads the same shards (the
fast image path of `loader_throughput.py`: 336 px JPEGs, LLaVA-like conversations) with the
check on and with it off (the manifests' hashes dropped), in one process (CPU time per sample:
hardly load-dependent) and through 2 DataLoader workers (samples/s), alternating the two several
times. It also times sha256 alone over the shards' bytes: that divided by the loader's CPU per
sample is the check's share of the loading work, the figure the goal (< 2%) is about.

    python -m bench.shard_hashing [--samples 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from bench.loader_throughput import consume, cpu_ms_per_sample, make_source
from llava_ablate.config import DataCfg
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.images import tower_side
from llava_ablate.data.mixture import BuiltMixture, open_mixture
from llava_ablate.data.shards import build_mixture
from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader, StreamPlan


def unverified(mixture: BuiltMixture) -> BuiltMixture:
    """The same mixture without the manifests' hashes: the stream reads it unchecked."""
    sources = [
        dataclasses.replace(s, shards=[dataclasses.replace(t, sha256=None) for t in s.shards])
        for s in mixture.sources
    ]
    return dataclasses.replace(mixture, sources=sources)


def _loader(mixture, encoder, collate, micro: int, workers: int) -> StreamingLoader:
    stream = ShardStream(
        StreamPlan(mixture, 0, 256),
        encoder,
        collate,
        BatchingOptions(micro, "group", 8),
        rank=0,
        world=1,
        workers=workers,
    )
    return StreamingLoader(stream, workers, prefetch_factor=4)


def hash_ms_per_sample(shards: list[Path], samples: int, repeats: int = 3) -> float:
    """CPU ms of sha256 alone over every shard byte, per stored sample (best of `repeats`)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for path in shards:
            with path.open("rb") as fh:
                hashlib.file_digest(fh, "sha256")
        best = min(best, time.process_time() - t)
    return 1000 * best / samples


def _runs(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from bench.common import tiny_variant

    variant = tiny_variant(image_size=336, patch=14)
    encoder = SampleEncoder(
        variant.processor, EncodeOptions("chat", variant.num_image_tokens, 4096, "truncate", True)
    )
    collate = Collator(variant.tokenizer.pad_token_id)
    side = tower_side(variant.processor.image_processor, pad=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_source(root / "raw", args.samples)
        data = DataCfg(name="h", sources=[src], shards_dir=str(root / "s"), samples_per_shard=100)
        build_mixture(data, workers=args.workers, max_image_side=side)
        checked = open_mixture(data, 0)
        unchecked = unverified(checked)
        shards = [t.path for s in checked.sources for t in s.shards]
        shard_bytes = sum(p.stat().st_size for p in shards)
        n_batches = args.samples // args.micro // 2
        cpu = {"on": [], "off": []}
        rate = {"on": [], "off": []}
        for _ in range(args.repeats):  # alternated, so a change of load hits both alike
            for name, mixture in (("off", unchecked), ("on", checked)):
                cpu[name].append(
                    cpu_ms_per_sample(_loader(mixture, encoder, collate, args.micro, 0), n_batches)
                )
                loader = _loader(mixture, encoder, collate, args.micro, args.workers)
                rate[name].append(consume(loader, n_batches, 0.0)[0])
                loader.close()
        hashing = hash_ms_per_sample(shards, checked.size)
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    rate_on, rate_off = statistics.median(rate["on"]), statistics.median(rate["off"])
    out = {
        "bytes_per_sample": shard_bytes / checked.size,
        "hash_ms_per_sample": hashing,
        "hash_share_of_loader_cpu": hashing / cpu_off,
        "cpu_ms_per_sample_off": cpu_off,
        "cpu_ms_per_sample_on": cpu_on,
        "cpu_on_over_off": cpu_on / cpu_off,
        "samples_per_s_off": rate_off,
        "samples_per_s_on": rate_on,
        "samples_per_s_on_over_off": rate_on / rate_off,
    }
    print(
        f"shard hashing ({args.samples} samples, {shard_bytes / checked.size / 1024:.1f} KiB per "
        f"sample stored, {args.repeats} alternated repeats, medians)"
    )
    print(
        f"  sha256 alone: {hashing:.3f} ms/sample = {hashing / cpu_off:.2%} of the loader's "
        f"{cpu_off:.2f} ms/sample CPU"
    )
    print(
        f"  loader CPU per sample, check off / on: {cpu_off:.2f} / {cpu_on:.2f} ms "
        f"({cpu_on / cpu_off:.3f}x; runs {_runs(cpu['off'])} / {_runs(cpu['on'])})"
    )
    print(
        f"  samples/s, {args.workers} workers, off / on: {rate_off:.1f} / {rate_on:.1f} "
        f"({rate_on / rate_off:.3f}x; runs {_runs(rate['off'])} / {_runs(rate['on'])})"
    )
    return out


if __name__ == "__main__":
    main()
