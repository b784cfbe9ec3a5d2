"""Parquet sources are streamed: a build holds a batch of rows (never the file), reads each file
once, and writes the same shards whatever the files' row-group layout and the worker count."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from llava_ablate.config import SourceCfg
from llava_ablate.data.shards import build_source
from llava_ablate.data.sources.parquet import ParquetReader

from datagen import llava_rows


def noise_png(i: int, side: int = 64) -> bytes:
    """An incompressible image (~12 KB): the file's size is its images, as in OneVision data."""
    pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def onevision_table(n: int, first: int = 0) -> pa.Table:
    rows = llava_rows(n, f"ov{first}-")
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "image": [
                {"bytes": noise_png(first + i), "path": None} if "image" in r else None
                for i, r in enumerate(rows)
            ],
            "conversations": [r["conversations"] for r in rows],
            "data_source": ["synthetic"] * n,  # a column the reader never needs
        }
    )


def _source(path: Path) -> SourceCfg:
    return SourceCfg(name="ov", path=str(path), format="parquet")


def _peak_arrow_memory(path: Path, out: Path) -> int:
    """Arrow's own allocation high-water mark (a proxy memory pool) over a whole build."""
    default = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default)
    pa.set_memory_pool(pool)
    try:
        build_source(_source(path), out, samples_per_shard=100, workers=1)
    finally:
        pa.set_memory_pool(default)
    return pool.max_memory()


def test_build_holds_a_row_group_not_the_file(tmp_path):
    """Reading the table whole (the old reader) peaks above the file's size, and grows with it;
    streaming holds about a row group (25 rows here) whatever the file's size. (A page is the
    least Arrow can decode, and pyarrow's writer puts up to 1,024 values in one page, so a file
    written as one row group is held whole; `datasets` writes image data 100 rows a group.)"""
    peaks, sizes = [], []
    for n in (160, 640):
        path = tmp_path / f"ov{n}.parquet"
        pq.write_table(onevision_table(n), path, row_group_size=25)
        peaks.append(_peak_arrow_memory(path, tmp_path / f"s{n}"))
        sizes.append(path.stat().st_size)
    assert peaks[1] < sizes[1] / 4, (peaks, sizes)
    assert peaks[1] < 1.5 * peaks[0], f"peak grew with the file: {peaks} for {sizes} bytes"


def _bytes_read() -> int:
    """Bytes this process read through read(2)/pread(2), as the kernel counts them."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_build_reads_each_file_once(tmp_path):
    """A single-row-group file cut into 4 shards: the old reader read the whole file for each
    shard (4x its size); now the 4 shards are one run that streams the file once."""
    path = tmp_path / "ov.parquet"
    pq.write_table(onevision_table(200), path)
    src = _source(path)
    build_source(src, tmp_path / "s", samples_per_shard=50, workers=1)  # imports warmed up
    before = _bytes_read()
    manifest = build_source(src, tmp_path / "s", samples_per_shard=50, workers=1, force=True)
    read = _bytes_read() - before
    # The build also reads back each shard it wrote once (its sha256) and small sidecars.
    file_reads = (read - manifest["bytes"]) / path.stat().st_size
    assert len(manifest["shards"]) == 4
    assert file_reads < 1.2, f"read the file {file_reads:.2f} times"


def test_shards_between_row_group_starts_form_one_run():
    from llava_ablate.data.shards import shard_runs

    # Row groups start at 0, 25, 50, 100 (of 120 rows); shards of 25 rows.
    points = [0, 25, 50, 100, 120]
    assert shard_runs([0, 1, 2, 3, 4], 25, points) == [[0], [1], [2, 3], [4]]
    assert shard_runs([0, 3, 4], 25, points) == [[0], [3], [4]]  # 2 was built already
    assert shard_runs([0, 1, 2], 25, None) == [[0], [1], [2]]  # in-memory sources


def _old_records(files: list[Path]) -> list:
    """What a reader must yield: every row of every file in order, from the whole table."""
    reader = ParquetReader(_source(files[0].parent / "*.parquet"))
    out, index = [], 0
    for f in files:
        for row in pq.read_table(f).to_pylist():
            out.append(reader._record(index, f, row))
            index += 1
    return out


def test_records_of_any_range_in_any_order_equal_the_whole_table(tmp_path):
    files = [tmp_path / f"{k}.parquet" for k in "abc"]
    pq.write_table(onevision_table(53, 0), files[0], row_group_size=7)
    pq.write_table(onevision_table(20, 53), files[1])
    pq.write_table(onevision_table(31, 73), files[2], row_group_size=10)
    expected = _old_records(files)
    reader = ParquetReader(_source(tmp_path / "*.parquet"))
    assert len(reader) == len(expected) == 104
    ranges = [(0, 104), (0, 10), (10, 20), (20, 60), (5, 9), (3, 4), (60, 104), (52, 54)]
    rng = random.Random(0)
    for _ in range(30):  # forwards within a row group, backwards, across files
        a = rng.randrange(104)
        ranges.append((a, rng.randrange(a, 105)))
    for a, b in ranges:
        assert list(reader.records(a, b)) == expected[a:b], (a, b)


def test_shards_are_identical_for_any_row_groups_and_workers(tmp_path):
    table = onevision_table(90)
    shas = set()
    for layout, groups in [("rg7", 7), ("rg30", 30), ("one", None)]:
        pq.write_table(table, tmp_path / f"{layout}.parquet", row_group_size=groups)
        for workers in (1, 2):
            m = build_source(
                _source(tmp_path / f"{layout}.parquet"),
                tmp_path / f"s-{layout}-{workers}",
                samples_per_shard=20,
                workers=workers,
            )
            shas.add(tuple(s["sha256"] for s in m["shards"]))
    assert len(shas) == 1 and len(next(iter(shas))) == 5
