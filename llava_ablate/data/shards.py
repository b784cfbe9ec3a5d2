"""Convert a source to webdataset tar shards plus a manifest, once, in parallel, resumably.

Layout: <shards_dir>/<source>/<source>-000000.tar (+ .json stats sidecar), manifest.json and
skipped.jsonl. Shard i holds the valid records among source rows [i*N, (i+1)*N): conversion is
deterministic. A shard counts as done only when its sidecar exists (renamed last), so a crash
mid-shard leaves a *.tmp that is deleted on the next run and never read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.conversation import MalformedConversation, llava_to_messages
from llava_ablate.data.sources import (
    RawRecord,
    SourceError,
    SourceReader,
    open_source,
    unreleased_sources,
)

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
MANIFEST = "manifest.json"


class StaleShards(RuntimeError):
    pass


def fingerprint(src: SourceCfg, reader: SourceReader, samples_per_shard: int) -> str:
    """Changes when the inputs or anything that shapes the shards change."""
    parts = {
        "version": CONVERTER_VERSION,
        "format": src.format,
        "image_root": src.image_root,
        "samples_per_shard": samples_per_shard,
        "files": [(str(f), f.stat().st_size, int(f.stat().st_mtime)) for f in reader.input_files()],
    }
    if src.format == "classification":
        parts.update(
            questions=list(src.questions),
            answer=src.answer,
            mcq=[src.mcq_fraction, src.mcq_options, src.mcq_instruction],
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _image_bytes(image: Path | bytes) -> tuple[bytes, str, tuple[int, int]]:
    if isinstance(image, bytes):
        data, ext = image, None
    else:
        data, ext = image.read_bytes(), image.suffix.lower().lstrip(".")
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # a truncated or corrupt file fails here, at build time, once
        fmt = (im.format or ext or "png").lower()
        size = im.size
    return data, {"jpeg": "jpg"}.get(fmt, fmt), size


def check_record(rec: RawRecord) -> tuple[str, str] | None:
    """(reason, detail) when the record cannot be trained on, else None."""
    if rec.problem:
        return rec.problem, ""
    try:
        messages = llava_to_messages(rec.conversations)
    except MalformedConversation as e:
        return "malformed_conversation", str(e)
    if not any(m["role"] == "assistant" for m in messages):
        return "empty_conversation", "no assistant turn"
    tags = sum(str(t.get("value", "")).count("<image>") for t in rec.conversations)
    if tags != len(rec.images):
        return "image_tag_mismatch", f"{tags} <image> tag(s) for {len(rec.images)} image(s)"
    return None


@dataclass
class _Job:
    reader: SourceReader
    out_dir: Path
    name: str
    per_shard: int
    token_length: Callable[[RawRecord], int] | None  # text tokens under the chat template


_JOB: _Job | None = None  # set in the parent before forking: workers share the loaded source


def _write_shard(i: int) -> dict:
    job = _JOB
    assert job is not None
    stem = job.out_dir / f"{job.name}-{i:06d}"
    stats: dict = {"count": 0, "skipped": [], "image_sizes": [], "text_chars": [], "tokens": []}
    tmp_tar = stem.with_suffix(".tar.tmp")
    with wds.TarWriter(str(tmp_tar), mtime=0) as sink:  # fixed mtime: byte-identical rebuilds
        for rec in job.reader.records(i * job.per_shard, (i + 1) * job.per_shard):
            bad = check_record(rec)
            images: dict[str, bytes] = {}
            if bad is None and job.token_length is not None:
                try:
                    stats["tokens"].append(job.token_length(rec))
                except ValueError as e:  # the conversation cannot be tokenised/masked
                    bad = (type(e).__name__, str(e))
            if bad is None:
                for k, image in enumerate(rec.images):
                    try:
                        data, ext, size = _image_bytes(image)
                    except FileNotFoundError:
                        bad = ("missing_image", str(image))
                        break
                    except (OSError, SyntaxError, ValueError) as e:
                        bad = (
                            "corrupt_image",
                            f"{image if isinstance(image, Path) else 'bytes'}: {e}",
                        )
                        break
                    images[f"img{k}.{ext}"] = data
                    stats["image_sizes"].append(size)
            if bad is not None:
                stats["skipped"].append(
                    {"index": rec.index, "id": rec.id, "reason": bad[0], "detail": bad[1]}
                )
                continue
            meta = {
                "id": rec.id,
                "index": rec.index,
                "conversations": rec.conversations,
                "images": sorted(images),
            }
            sink.write({"__key__": f"{rec.index:09d}", "json": meta, **images})
            stats["count"] += 1
            stats["text_chars"].append(sum(len(str(t.get("value", ""))) for t in rec.conversations))
    stats["bytes"] = tmp_tar.stat().st_size
    os.replace(tmp_tar, stem.with_suffix(".tar"))
    sidecar = stem.with_suffix(".json.tmp")
    sidecar.write_text(json.dumps(stats))
    os.replace(sidecar, stem.with_suffix(".json"))  # last: its presence means "shard done"
    return stats


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    values = sorted(values)
    return {
        "min": values[0],
        "p50": values[len(values) // 2],
        "p95": values[int(0.95 * (len(values) - 1))],
        "max": values[-1],
        "mean": round(statistics.fmean(values), 2),
    }


def build_source(
    src: SourceCfg,
    shards_dir: Path,
    *,
    samples_per_shard: int,
    workers: int,
    force: bool = False,
    seed: int = 0,
    token_length: Callable[[RawRecord], int] | None = None,
) -> dict:
    """Build (or verify) one source's shards; return its manifest."""
    global _JOB
    out_dir = Path(shards_dir) / src.name
    reader = open_source(src, seed)
    fp = fingerprint(src, reader, samples_per_shard)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["fingerprint"] == fp and not force:
            log.info("source %s: up to date (%d samples)", src.name, manifest["count"])
            return manifest
        if not force:
            raise StaleShards(
                f"source {src.name!r} changed since {out_dir} was built (inputs or options differ);"
                " rebuild it with --force"
            )
        manifest_path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for f in out_dir.glob(f"{src.name}-*"):
            f.unlink()
    for tmp in out_dir.glob("*.tmp"):  # leftovers of a crash: never read, rebuilt below
        tmp.unlink()
    n_shards = max(1, -(-len(reader) // samples_per_shard))
    todo = [i for i in range(n_shards) if not (out_dir / f"{src.name}-{i:06d}.json").exists()]
    _JOB = _Job(reader, out_dir, src.name, samples_per_shard, token_length)
    bar = tqdm(
        total=n_shards,
        initial=n_shards - len(todo),
        desc=f"build {src.name}",
        unit="shard",
        disable=None,
    )
    if workers > 1 and len(todo) > 1:
        with mp.get_context("fork").Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_write_shard, todo):
                bar.update()
    else:
        for i in todo:
            _write_shard(i)
            bar.update()
    bar.close()
    _JOB = None
    return _write_manifest(src, out_dir, n_shards, fp, len(reader))


def _write_manifest(src: SourceCfg, out_dir: Path, n_shards: int, fp: str, rows: int) -> dict:
    shards, skipped, sizes, chars, tokens = [], [], [], [], []
    for i in range(n_shards):
        stem = out_dir / f"{src.name}-{i:06d}"
        stats = json.loads(stem.with_suffix(".json").read_text())
        shards.append(
            {
                "file": stem.with_suffix(".tar").name,
                "count": stats["count"],
                "bytes": stats["bytes"],
            }
        )
        skipped += stats["skipped"]
        sizes += stats["image_sizes"]
        chars += stats["text_chars"]
        tokens += stats["tokens"]
    with (out_dir / "skipped.jsonl").open("w") as fh:
        for s in skipped:
            fh.write(json.dumps(s) + "\n")
    manifest = {
        "source": src.name,
        "format": src.format,
        "fingerprint": fp,
        "rows": rows,
        "count": sum(s["count"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "skipped": dict(Counter(s["reason"] for s in skipped)),
        "image_width": _summary([w for w, _ in sizes]),
        "image_height": _summary([h for _, h in sizes]),
        "images": len(sizes),
        "text_chars": _summary(chars),
        # Text tokens under the build's chat template (image placeholders excluded); null when
        # the build ran without a tokenizer.
        "text_tokens": _summary(tokens),
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / MANIFEST)
    if skipped:
        log.warning(
            "source %s: skipped %s (every record in %s)",
            src.name,
            manifest["skipped"],
            out_dir / "skipped.jsonl",
        )
    return manifest


def build_mixture(
    data: DataCfg,
    *,
    seed: int = 0,
    force: bool = False,
    token_length: Callable[[RawRecord], int] | None = None,
    workers: int | None = None,
) -> dict[str, dict]:
    """Build every source of a mixture (each once; shared with other mixtures by name)."""
    why = unreleased_sources(data)
    if why:
        raise SourceError(why)
    return {
        src.name: build_source(
            src,
            Path(data.shards_dir),
            samples_per_shard=data.samples_per_shard,
            workers=workers or data.build_workers,
            force=force,
            seed=seed,
            token_length=token_length,
        )
        for src in data.sources
    }
