"""Convert a source to webdataset tar shards plus a manifest, once, in parallel, resumably.

Layout: <shards_dir>/<source>/<source>-000000.tar (+ .json stats sidecar), manifest.json and
skipped.jsonl. Shard i holds the valid records among source rows [i*N, (i+1)*N): conversion is
deterministic. A shard counts as done only when its sidecar exists (renamed last), so a crash
mid-shard leaves a *.tmp that is deleted on the next run and never read. The manifest records
each shard's size and sha256: a re-run verifies them and rebuilds a shard damaged since (a
partial copy, a full disk) instead of calling it up to date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing as mp
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from llava_ablate.base.files import atomic_write
from llava_ablate.config import DataCfg, SourceCfg
from llava_ablate.data.conversation import (
    MalformedConversation,
    llava_to_messages,
    trim_unanswered,
)
from llava_ablate.data.images import shrink_encoded
from llava_ablate.data.sources import (
    RawRecord,
    SourceError,
    SourceReader,
    open_source,
    unreleased_sources,
)

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # 2: fingerprint covers images and every option; shard sha256s
MANIFEST = "manifest.json"
# Options that select among built samples at read time: changing them needs no rebuild.
_READ_TIME_OPTIONS = {"sampling", "weight", "released"}


class StaleShards(RuntimeError):
    pass


def side_text(side: int | None) -> str:
    return "the original images" if side is None else f"images of at most {side} px"


def covers(built: int | None, needed: int | None) -> bool:
    """Shards built with max_image_side=`built` hold every pixel a run at `needed` reads."""
    return built is None or (needed is not None and built >= needed)


def too_small(source: str, out_dir: Path, built: int | None, needed: int | None) -> str:
    reads = "the original images" if needed is None else f"images up to {needed} px"
    return (
        f"source {source!r}: the shards in {out_dir} were built with data.max_image_side="
        f"{built} (images stored at most {built} px on their longer side), but this run reads "
        f"{reads} (data.max_image_side={needed}; auto: from the vision tower). Rebuild them "
        "with `llava-ablate data build data=<mixture> <this run's vision=...> --force`, or set "
        f"data.max_image_side={built} to train on the smaller images knowingly"
    )


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None  # counted as missing_image; appearing later makes the build stale
    return st.st_size, st.st_mtime_ns


def fingerprint(src: SourceCfg, reader: SourceReader, samples_per_shard: int, seed: int = 0) -> str:
    """Changes when the inputs (source files and every image's size and mtime) or any option
    that shapes the shards change."""
    options = {k: v for k, v in dataclasses.asdict(src).items() if k not in _READ_TIME_OPTIONS}
    parts = {
        "version": CONVERTER_VERSION,
        "options": options,
        "samples_per_shard": samples_per_shard,
        "seed": seed if src.format == "classification" else None,  # picks questions and options
        "files": [(str(f), _stat(f)) for f in reader.input_files()],
    }
    images = hashlib.sha256()
    for path in reader.image_files():
        images.update(json.dumps([str(path), _stat(path)]).encode())
    parts["images"] = images.hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def damaged_shards(out_dir: Path, manifest: dict) -> dict[str, str]:
    """Shard file -> why, for each shard that no longer matches the manifest."""
    damaged = {}
    for shard in manifest["shards"]:
        tar = out_dir / shard["file"]
        if not tar.exists() or not tar.with_suffix(".json").exists():
            damaged[shard["file"]] = "missing"
        elif tar.stat().st_size != shard["bytes"]:
            damaged[shard["file"]] = (
                f"{tar.stat().st_size} bytes, the manifest says {shard['bytes']}"
            )
        elif shard.get("sha256") and _sha256(tar) != shard["sha256"]:
            damaged[shard["file"]] = "sha256 differs from the manifest"
    return damaged


def _image_bytes(
    image: Path | bytes, max_side: int | None = None
) -> tuple[bytes, str, tuple[int, int], bool]:
    """(bytes to store, extension, stored size, re-encoded?); the original file is only read."""
    if isinstance(image, bytes):
        data, ext = image, None
    else:
        data, ext = image.read_bytes(), image.suffix.lower().lstrip(".")
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # a truncated or corrupt file fails here, at build time, once
        fmt = (im.format or ext or "png").lower()
        size = im.size
    if max_side is not None and max(size) > max_side:
        data, fmt, size = shrink_encoded(data, max_side)  # type: ignore[misc]
        return data, fmt, size, True
    return data, {"jpeg": "jpg"}.get(fmt, fmt), size, False


def check_record(rec: RawRecord) -> tuple[str, str] | None:
    """(reason, detail) when the record cannot be trained on, else None."""
    if rec.problem:
        return rec.problem, rec.problem_detail
    try:
        messages = llava_to_messages(rec.conversations)
        if not any(m["role"] == "assistant" for m in messages):
            return "empty_conversation", "no assistant turn"
        trim_unanswered(messages)
    except MalformedConversation as e:
        return "malformed_conversation", str(e)
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
    max_image_side: int | None  # longer side of stored images; None: the originals' bytes


_JOB: _Job | None = None  # set in the parent before forking: workers share the loaded source


def _write_shard(i: int) -> dict:
    job = _JOB
    assert job is not None
    stem = job.out_dir / f"{job.name}-{i:06d}"
    stats: dict = {
        "count": 0,
        "skipped": [],
        "trimmed": 0,  # kept, minus a final human turn that nothing answers
        "image_sizes": [],  # as stored
        "reencoded": 0,  # images stored smaller than their original (max_image_side)
        "text_chars": [],
        "tokens": [],
    }
    with atomic_write(stem.with_suffix(".tar")) as tmp_tar:
        _write_records(job, i, tmp_tar, stats)
        stats["bytes"] = tmp_tar.stat().st_size
        stats["sha256"] = _sha256(tmp_tar)
    with atomic_write(stem.with_suffix(".json")) as sidecar:  # last: it means "shard done"
        sidecar.write_text(json.dumps(stats))
    return stats


def shard_runs(todo: list[int], per_shard: int, seek_points: list[int] | None) -> list[list[int]]:
    """The shards to write, in runs that one worker writes in order. A reader that can start
    cheaply only at some source indices (parquet: a row group's first row) lists them in
    `seek_points`; a shard that starts elsewhere continues its predecessor's run, so that run
    reads the row group once instead of every shard re-reading it. None: any index is cheap
    (the source is in memory), every shard is a run of its own."""
    points = set(seek_points) if seek_points is not None else None
    runs: list[list[int]] = []
    for i in todo:
        joins = points is not None and runs and runs[-1][-1] == i - 1
        if joins and i * per_shard not in points:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _write_run(run: list[int]) -> list[dict]:
    return [_write_shard(i) for i in run]


def _write_records(job: _Job, i: int, tar: Path, stats: dict) -> None:
    """Shard `i`'s records into the tar at `tar`, counting what was kept and skipped in `stats`."""
    with wds.TarWriter(str(tar), mtime=0) as sink:  # fixed mtime: byte-identical rebuilds
        for rec in job.reader.records(i * job.per_shard, (i + 1) * job.per_shard):
            bad = check_record(rec)
            images: dict[str, bytes] = {}
            if bad is None and job.token_length is not None:
                try:
                    stats["tokens"].append(job.token_length(rec))
                except ValueError as e:  # the conversation cannot be tokenised/masked
                    bad = (getattr(e, "reason", type(e).__name__), str(e))
            if bad is None:
                for k, image in enumerate(rec.images):
                    try:
                        data, ext, size, shrunk = _image_bytes(image, job.max_image_side)
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
                    stats["reencoded"] += shrunk
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
            stats["trimmed"] += rec.conversations[-1]["from"] == "human"
            stats["text_chars"].append(sum(len(str(t.get("value", ""))) for t in rec.conversations))


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
    max_image_side: int | None = None,
) -> dict:
    """Build (or verify) one source's shards; return its manifest. `max_image_side`: images
    larger than that (longer side, px) are stored re-encoded at that size (the originals are
    only read); None stores the original bytes."""
    global _JOB
    out_dir = Path(shards_dir) / src.name
    reader = open_source(src, seed)
    fp = fingerprint(src, reader, samples_per_shard, seed)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        built_side = manifest.get("max_image_side")  # absent: built before the option existed
        if manifest["fingerprint"] == fp and not force:
            if not covers(built_side, max_image_side):
                raise StaleShards(too_small(src.name, out_dir, built_side, max_image_side))
            if built_side != max_image_side:
                log.info(
                    "source %s: built with %s, which covers the %s asked for; kept (--force "
                    "rebuilds it smaller, which loads faster)",
                    src.name,
                    side_text(built_side),
                    side_text(max_image_side),
                )
                max_image_side = built_side  # damaged shards are rebuilt as the rest were
            damaged = damaged_shards(out_dir, manifest)
            if not damaged:
                log.info(
                    "source %s: up to date (%d samples, verified)", src.name, manifest["count"]
                )
                return manifest
            # Conversion is deterministic: rebuilding only these shards restores the build.
            log.warning(
                "source %s: %d shard(s) damaged since the build, rebuilding them: %s",
                src.name,
                len(damaged),
                ", ".join(f"{name} ({why})" for name, why in damaged.items()),
            )
            for name in damaged:
                (out_dir / name).with_suffix(".json").unlink(missing_ok=True)
                (out_dir / name).unlink(missing_ok=True)
        elif not force:
            raise StaleShards(
                f"source {src.name!r} changed since {out_dir} was built (its files, images or "
                "options differ, or an older converter built it); rebuild it with --force"
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
    _JOB = _Job(reader, out_dir, src.name, samples_per_shard, token_length, max_image_side)
    bar = tqdm(
        total=n_shards,
        initial=n_shards - len(todo),
        desc=f"build {src.name}",
        unit="shard",
        disable=None,
    )
    runs = shard_runs(todo, samples_per_shard, reader.seek_points())
    if workers > 1 and len(runs) > 1:
        with mp.get_context("fork").Pool(min(workers, len(runs))) as pool:
            for done in pool.imap_unordered(_write_run, runs):
                bar.update(len(done))
    else:
        for run in runs:
            bar.update(len(_write_run(run)))
    bar.close()
    _JOB = None
    return _write_manifest(src, out_dir, n_shards, fp, len(reader), max_image_side)


def _write_manifest(
    src: SourceCfg, out_dir: Path, n_shards: int, fp: str, rows: int, max_image_side: int | None
) -> dict:
    shards, skipped, sizes, chars, tokens, trimmed, reencoded = [], [], [], [], [], 0, 0
    for i in range(n_shards):
        stem = out_dir / f"{src.name}-{i:06d}"
        stats = json.loads(stem.with_suffix(".json").read_text())
        shards.append(
            {
                "file": stem.with_suffix(".tar").name,
                "count": stats["count"],
                "bytes": stats["bytes"],
                "sha256": stats.get("sha256") or _sha256(stem.with_suffix(".tar")),
            }
        )
        skipped += stats["skipped"]
        trimmed += stats["trimmed"]
        reencoded += stats.get("reencoded", 0)
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
        "trimmed": {"trailing_human_turn": trimmed} if trimmed else {},
        # Images stored no larger than this (longer side, px; re-encoded from the originals,
        # which stay untouched); null: the originals' bytes. A run needing more refuses them.
        "max_image_side": max_image_side,
        "images_reencoded": reencoded,
        "image_width": _summary([w for w, _ in sizes]),  # as stored
        "image_height": _summary([h for _, h in sizes]),
        "images": len(sizes),
        "text_chars": _summary(chars),
        # Text tokens under the build's chat template (image placeholders excluded); null when
        # the build ran without a tokenizer.
        "text_tokens": _summary(tokens),
    }
    with atomic_write(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    if skipped:
        log.warning(
            "source %s: skipped %s (every record in %s)",
            src.name,
            manifest["skipped"],
            out_dir / "skipped.jsonl",
        )
    if trimmed:
        log.info(
            "source %s: %d conversation(s) end on a human turn that nothing answers; it is "
            "dropped when tokenising (never trained on)",
            src.name,
            trimmed,
        )
    return manifest


def build_mixture(
    data: DataCfg,
    *,
    seed: int = 0,
    force: bool = False,
    token_length: Callable[[RawRecord], int] | None = None,
    workers: int | None = None,
    max_image_side: int | None = None,
) -> dict[str, dict]:
    """Build every source of a mixture (each once; shared with other mixtures by name).
    `max_image_side`: data.max_image_side in pixels, resolved against the vision tower by the
    caller (`images.resolve_max_image_side`); None stores the original images."""
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
            max_image_side=max_image_side,
        )
        for src in data.sources
    }
