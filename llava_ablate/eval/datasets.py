"""Classification datasets as (class names, samples): the types, generic sources, sub-sampling.

The paper's ten datasets are read from their standard on-disk layouts in `layouts.py` (which also
holds `load_dataset`, picking a reader by kind); this module holds what every source shares and
the generic image-folder / CSV / JSONL / parquet readers.
A missing or malformed source raises `DatasetLayoutError` naming the file that was expected; an
image that cannot be read raises `UnreadableImage` (the evaluator skips, counts and names it).
"""

from __future__ import annotations

import csv
import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from llava_ablate.data.images import IMAGE_SUFFIXES, load_rgb
from llava_ablate.eval_config import DatasetCfg


class DatasetLayoutError(FileNotFoundError):
    """A dataset directory lacks an expected file or has a malformed one."""


class UnreadableImage(Exception):
    """An evaluation image that cannot be read; `reason` is the counted category."""

    def __init__(self, image: str, reason: str, detail: str):
        super().__init__(f"{reason}: {image} ({detail})")
        self.image, self.reason, self.detail = image, reason, detail


# What PIL and the decoders under it raise for a damaged file (PNG: struct/zlib errors, JPEG:
# "image file is truncated", anything: UnidentifiedImageError).
_IMAGE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def _image_error_reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing_image"
    if isinstance(e, UnidentifiedImageError):
        return "unreadable_image"
    if isinstance(e, Image.DecompressionBombError):
        return "oversized_image"
    if "truncated" in str(e) or isinstance(e, (EOFError, struct.error)):
        return "truncated_image"
    return "corrupt_image"


@dataclass(frozen=True)
class Sample:
    id: str  # stable across runs: question ids and resume depend on it
    label: int  # index into ClassificationDataset.classnames
    image: str  # a file path, or "<parquet file>#<row>"


@dataclass
class ClassificationDataset:
    name: str
    classnames: list[str]
    samples: list[Sample]
    crop_border: int = 0  # ObjectNet: its images carry a 1-px red border, cropped before use
    _reader: Callable[[str], Image.Image] | None = field(default=None, repr=False)
    # Classes beyond the dataset's standard set ("<id> <name>"; ImageNet: wnids outside the 1000
    # that LOC_synset_mapping.txt names): they are options too; metrics.json counts them.
    extra_classes: list[str] = field(default_factory=list)

    def load_image(self, sample: Sample) -> Image.Image:
        """The sample's RGB image; UnreadableImage (with the reason) when it cannot be decoded."""
        try:
            image = self._reader(sample.image) if self._reader else load_rgb(Path(sample.image))
        except _IMAGE_ERRORS as e:
            reason = _image_error_reason(e)
            raise UnreadableImage(sample.image, reason, f"{type(e).__name__}: {e}") from e
        if self.crop_border:
            w, h = image.size
            b = self.crop_border
            image = image.crop((b, b, w - b, h - b))
        return image

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"expected {what} at {path}, which does not exist")
    return path


def shipped_classnames(filename: str) -> list[str]:
    """Names shipped in llava_ablate/eval/classnames/ (`.tsv`: second column; `.txt`: the line)."""
    text = resources.files("llava_ablate.eval.classnames").joinpath(filename).read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return [line.split("\t", 1)[1] if filename.endswith(".tsv") else line for line in lines]


def read_classnames_file(path: str | Path) -> list[tuple[str | None, str]]:
    """A user file of (key, name): one name per line (key None, matched by position), or keyed
    lines `key<TAB>name` / CSV `key,name[,...]` (matched to the dataset's classes by key)."""
    path = require(Path(path), "a class-names file")
    lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
    if path.suffix.lower() == ".csv":
        return [(row[0].strip(), row[1].strip()) for row in csv.reader(lines)]
    return [
        (line.split("\t")[0].strip(), line.split("\t")[-1].strip())
        if "\t" in line
        else (None, line.strip())
        for line in lines
    ]


def rename_classes(dataset_name: str, classnames: list[str], path: str) -> list[str]:
    entries = read_classnames_file(path)
    if all(key is not None for key, _ in entries):
        # Keys name the dataset's classes (a folder name or its readable form): order-proof.
        by_key = {k: n for k, n in entries} | {readable(k): n for k, n in entries}
        missing = [c for c in classnames if c not in by_key]
        if missing:
            raise DatasetLayoutError(
                f"{path} names no class for {missing[:5]} ({len(missing)} of "
                f"{len(classnames)} classes of {dataset_name}); add `key<TAB>name` lines for them"
            )
        return [by_key[c] for c in classnames]
    if len(entries) != len(classnames):
        raise DatasetLayoutError(
            f"{path} has {len(entries)} names but {dataset_name} has {len(classnames)} classes"
        )
    return [n for _, n in entries]


def readable(folder_name: str) -> str:
    """`Black_footed_Albatross` / `apple_pie` -> `black footed albatross` / `apple pie`."""
    return folder_name.replace("_", " ").strip().lower()


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def from_class_folders(
    name: str, root: Path, rename: Callable[[str], str] = readable, skip: tuple[str, ...] = ()
) -> ClassificationDataset:
    """`root/<class>/*.jpg` (any depth below the class folder)."""
    require(root, "a directory of class folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip)
    if not folders:
        raise DatasetLayoutError(f"expected class folders (<class>/<image>) under {root}")
    samples = []
    for label, folder in enumerate(folders):
        for img in list_images(folder):
            samples.append(Sample(str(img.relative_to(root)), label, str(img)))
    if not samples:
        raise DatasetLayoutError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {root}/<class>/")
    return ClassificationDataset(name, [rename(f.name) for f in folders], samples)


def from_records(name: str, records: list[dict], cfg: DatasetCfg, base: Path, source: str):
    """Rows with an image (path relative to `base`, or bytes) and a class-name label."""
    for key in (cfg.image_column, cfg.label_column):
        if records and key not in records[0]:
            raise DatasetLayoutError(
                f"{source}: expected a column {key!r} (eval.datasets.<name>.image_column / "
                f"label_column); found {sorted(records[0])}"
            )
    if not records:
        raise DatasetLayoutError(f"{source} has no rows")
    classnames = sorted({str(r[cfg.label_column]) for r in records})
    index = {c: i for i, c in enumerate(classnames)}
    samples = []
    for row_number, r in enumerate(records):
        ref = r[cfg.image_column]
        sample_id = str(r.get("id", row_number))
        if isinstance(ref, str):
            image = ref if Path(ref).is_absolute() else str(base / ref)
        else:  # bytes, or a HF-datasets image struct {"bytes":..., "path":...}
            image = f"{source}#{row_number}"
        samples.append(Sample(sample_id, index[str(r[cfg.label_column])], image))
    return ClassificationDataset(name, classnames, samples)


def read_csv_source(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    path = require(Path(cfg.root), "a CSV file with image and label columns")
    with open(path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    return from_records(name, records, cfg, path.parent, str(path))


def read_jsonl_source(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    path = require(Path(cfg.root), "a JSONL file with image and label fields")
    records = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetLayoutError(f"{path}:{n}: not a JSON object ({e})") from e
    return from_records(name, records, cfg, path.parent, str(path))


def read_parquet_source(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise ImportError("parquet sources need pyarrow: pip install pyarrow") from e
    path = require(Path(cfg.root), "a parquet file with image and label columns")
    table = pq.read_table(path, memory_map=True)
    records = table.select(
        [c for c in (cfg.image_column, cfg.label_column, "id") if c in table.column_names]
    ).to_pylist()
    # Keep the image bytes out of the Sample list; the reader fetches one row when asked.
    images = table.column(cfg.image_column) if cfg.image_column in table.column_names else None
    dataset = from_records(name, records, cfg, path.parent, str(path))

    def reader(ref: str) -> Image.Image:
        if "#" not in ref:
            return load_rgb(Path(ref))
        value = images[int(ref.rsplit("#", 1)[1])].as_py()
        data = value["bytes"] if isinstance(value, dict) else value
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    dataset._reader = reader
    return dataset


def subsample(
    dataset: ClassificationDataset, per_class: int | None, total: int | None, seed: int
) -> ClassificationDataset:
    """N images per class and/or N overall, drawn with `seed`; the kept order is by sample id."""
    if per_class is None and total is None:
        return dataset
    rng = random.Random(seed)
    samples = sorted(dataset.samples, key=lambda s: s.id)
    rng.shuffle(samples)
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for s in samples:
            if seen.get(s.label, 0) < per_class:
                seen[s.label] = seen.get(s.label, 0) + 1
                kept.append(s)
        samples = kept
    if total is not None:
        samples = samples[:total]
    samples.sort(key=lambda s: s.id)
    return ClassificationDataset(
        dataset.name,
        dataset.classnames,
        samples,
        dataset.crop_border,
        dataset._reader,
        extra_classes=dataset.extra_classes,
    )


def split_dir(root: Path, split: str) -> Path:
    """`root/<split>/<class>/...` when that folder exists, else `root/<class>/...`."""
    return root / split if (root / split).is_dir() else root
