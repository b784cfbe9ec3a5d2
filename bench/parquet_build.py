"""Shard build from LLaVA-OneVision-style parquet: records/s and peak RSS per build worker, as
the file grows, for the streaming reader against the old whole-table reader.

A synthetic file per size: rows of `id`, `image` ({bytes, path}: a distinct ~40 KB JPEG, 512x384,
as in the issue's 79 MB / 2,000-row file) and `conversations` (1-4 LLaVA turns), written 100
rows per row group as `datasets` writes image data. Each build runs in a fresh process with one
worker (`build_source(..., workers=1)`, 1,000 rows per shard, images re-encoded to the 336 px
the CLIP-L/336 grids store: `data.max_image_side=auto`), so its peak RSS (getrusage) is one
worker's. The old reader (kept here as the baseline: `pq.read_table(f).to_pylist()` for every
shard) runs only up to `--old-max-rows`: at 20,000 rows it would hold ~10x the file in memory.

    python -m bench.parquet_build [--rows 2000 20000] [--old-max-rows 2000] [--dir DIR]

`llava-ablate plan` projects build times from the streaming rate measured here
(llava_ablate/launch/build_rate.py holds the figure and where it came from).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PER_SHARD = 1000
MAX_SIDE = 336
DISTINCT = 64  # base images; each row's bytes differ by a JPEG comment (no dictionary dedup)


def _base_images() -> list[bytes]:
    out = []
    for i in range(DISTINCT):
        noise = (np.random.default_rng(i).random((48, 64, 3)) * 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(noise).resize((512, 384), Image.BICUBIC).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: distinct bytes, same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def write_file(path: Path, rows: int) -> int:
    """A OneVision-style parquet file of `rows` rows, written 100 rows a group; its size."""
    rng = random.Random(0)
    images = _base_images()
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
            ("data_source", pa.string()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, rows, 100):
            batch = {"id": [], "image": [], "conversations": [], "data_source": []}
            for i in range(lo, min(rows, lo + 100)):
                convo = []
                for t in range(rng.randint(1, 4)):
                    q = ("<image>\n" if t == 0 else "") + "What is shown here? " * rng.randint(1, 3)
                    a = "The picture shows a scene with objects. " * rng.randint(1, 12)
                    convo += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
                image = _with_comment(images[i % DISTINCT], f"row {i}")
                batch["id"].append(f"ov-{i}")
                batch["image"].append({"bytes": image, "path": f"{i}.jpg"})
                batch["conversations"].append(convo)
                batch["data_source"].append("synthetic")
            writer.write_table(pa.table(batch, schema=schema), row_group_size=100)
    return path.stat().st_size


def _child(reader: str, path: str, out: str) -> None:
    """One build in this fresh process; prints its figures as JSON."""
    from llava_ablate.config import SourceCfg
    from llava_ablate.data import shards
    from llava_ablate.data.sources.parquet import ParquetReader

    class WholeTableReader(ParquetReader):
        """The reader before streaming: the whole file, as Python objects, for every shard."""

        def seek_points(self):
            return None

        def records(self, start, stop):
            out = []
            for f, lo, hi in self.offsets:
                if hi <= start or lo >= stop:
                    continue
                table = pq.read_table(f)
                a, b = max(start, lo) - lo, min(stop, hi) - lo
                for k, row in enumerate(table.slice(a, b - a).to_pylist()):
                    out.append(self._record(lo + a + k, f, row))
            return out

    if reader == "old":
        shards.open_source = lambda src, seed=0: WholeTableReader(src)
    src = SourceCfg(name="ov", path=path, format="parquet")
    start = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = start.ru_utime + start.ru_stime
    t0 = time.perf_counter()
    manifest = shards.build_source(
        src, Path(out), samples_per_shard=PER_SHARD, workers=1, max_image_side=MAX_SIDE
    )
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    figures = {"seconds": seconds, "cpu_seconds": cpu, "records": manifest["count"]}
    print(json.dumps({**figures, "rss_mib": usage.ru_maxrss / 1024}))  # ru_maxrss: KiB


def measure(reader: str, path: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.parquet_build", "--child", reader, str(path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{reader} build of {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--old-max-rows", type=int, default=2000)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("READER", "FILE", "OUT"), help="internal")
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        results: dict[tuple[str, int], dict] = {}
        sizes = {}
        for rows in args.rows:
            path = root / f"ov{rows}.parquet"
            sizes[rows] = write_file(path, rows)
            for reader in ("new", "old"):
                if reader == "old" and rows > args.old_max_rows:
                    continue
                results[reader, rows] = measure(reader, path, root / f"shards-{reader}{rows}")
            path.unlink()
        # records/s: wall clock (shared machines: the load shows here); records per CPU-second:
        # what one worker with a core of its own converts.
        print("reader  rows    file MiB  records/s  records/CPU-s  peak RSS MiB  RSS/file")
        for (reader, rows), r in results.items():
            rate, cpu_rate = r["records"] / r["seconds"], r["records"] / r["cpu_seconds"]
            ratio = r["rss_mib"] / (sizes[rows] / 2**20)
            print(
                f"{reader:<7} {rows:<7,} {sizes[rows] / 2**20:8.1f}  {rate:9.1f}  "
                f"{cpu_rate:13.1f}  {r['rss_mib']:12.0f}  {ratio:8.2f}"
            )
    figures: dict = {}
    small, large = min(args.rows), max(args.rows)
    if ("new", small) in results and ("new", large) in results and small != large:
        figures["new_rss_growth"] = (
            results["new", large]["rss_mib"] / results["new", small]["rss_mib"]
        )
        print(
            f"peak RSS at {large:,} rows over {small:,} rows (streaming): "
            f"{figures['new_rss_growth']:.2f}x for {large / small:.0f}x the rows"
        )
    if ("old", small) in results:
        figures["old_over_new_rss"] = (
            results["old", small]["rss_mib"] / results["new", small]["rss_mib"]
        )
        print(f"peak RSS old/new at {small:,} rows: {figures['old_over_new_rss']:.2f}x")
    new = [r for (reader, _), r in results.items() if reader == "new"]
    records = sum(r["records"] for r in new)
    figures["records_per_s"] = records / sum(r["seconds"] for r in new)
    figures["records_per_cpu_s"] = records / sum(r["cpu_seconds"] for r in new)
    print(
        f"streaming build, one worker: {figures['records_per_s']:.1f} records/s wall clock, "
        f"{figures['records_per_cpu_s']:.1f} records per CPU-second (a core of its own)"
    )
    return figures


if __name__ == "__main__":
    main()
