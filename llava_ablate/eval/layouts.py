"""Readers for the paper's ten datasets in their standard (as-downloaded) on-disk layouts, and
`load_dataset`, which reads any configured dataset with the reader of its kind (`READERS`).

Each reader takes (name, DatasetCfg) and returns a ClassificationDataset; `cfg.root` is the
directory the archive unpacks to. Splits follow VLMClassifier: ImageNet `val`, the others `test`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from urllib.parse import unquote

from llava_ablate.eval.datasets import (
    ClassificationDataset,
    DatasetLayoutError,
    Sample,
    from_class_folders,
    list_images,
    read_csv_source,
    read_jsonl_source,
    read_parquet_source,
    readable,
    rename_classes,
    require,
    shipped_classnames,
    split_dir,
    subsample,
)
from llava_ablate.eval_config import DatasetCfg

_WNID = re.compile(r"^n\d{8}$")
log = logging.getLogger(__name__)


def _imagenet_table() -> tuple[list[str], list[str]]:
    text = (Path(__file__).parent / "classnames" / "imagenet.tsv").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line]
    return [r[0] for r in rows], [r[1] for r in rows]


def _synset_mapping(path: Path) -> dict[str, str]:
    """Kaggle's `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca`) -> {wnid: first name}."""
    out = {}
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        if not _WNID.match(wnid) or not names.strip():
            raise DatasetLayoutError(f"{path}:{n}: expected '<wnid> <name>[, <name>...]'")
        out[wnid] = names.split(",")[0].strip()
    return out


def imagenet(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """`<root>/val/<wnid>/*.JPEG`, or Kaggle's flat `<root>/ILSVRC/Data/CLS-LOC/val/*.JPEG`
    (or `<root>/val/*.JPEG`) labelled by `<root>/LOC_val_solution.csv`. Names come from the
    shipped table (readable, disambiguated); `<root>/LOC_synset_mapping.txt`, when present, names
    the wnids the table lacks (their classes follow the 1000)."""
    root = require(Path(cfg.root), "the ImageNet directory")
    split = "val" if cfg.split == "test" else cfg.split
    wnids, names = _imagenet_table()
    mapping_file = root / "LOC_synset_mapping.txt"
    if mapping_file.is_file():
        known = set(wnids)
        extra = {w: n for w, n in _synset_mapping(mapping_file).items() if w not in known}
        wnids, names = wnids + list(extra), names + list(extra.values())
    index = {w: i for i, w in enumerate(wnids)}

    def unknown(wnid: str, where: str) -> DatasetLayoutError:
        mapping = "" if mapping_file.is_file() else f" (no {mapping_file.name} in {root})"
        return DatasetLayoutError(
            f"{where}: {wnid!r} is not an ImageNet-1k wnid{mapping}; name it in "
            f"{mapping_file} ('<wnid> <name>' lines) or remove its images"
        )

    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC" / split
    image_dir = kaggle if kaggle.is_dir() else split_dir(root, split)
    folders = [p for p in image_dir.iterdir() if p.is_dir() and _WNID.match(p.name)]
    samples = []
    if folders:
        for folder in sorted(folders):
            if folder.name not in index:
                raise unknown(folder.name, str(folder))
            for img in list_images(folder):
                samples.append(Sample(img.stem, index[folder.name], str(img)))
    else:
        solution = require(
            root / f"LOC_{split}_solution.csv",
            f"class folders <wnid>/ under {image_dir}, or the flat layout's solution CSV",
        )
        with open(solution, newline="") as fh:
            for line, row in enumerate(csv.DictReader(fh), 2):  # line 1 is the header
                try:
                    wnid = row["PredictionString"].split()[0]
                    image_id = row["ImageId"]
                except (KeyError, IndexError, AttributeError) as e:
                    raise DatasetLayoutError(
                        f"{solution}:{line}: expected columns ImageId,PredictionString "
                        "('<wnid> x y x y')"
                    ) from e
                if wnid not in index:
                    raise unknown(wnid, f"{solution}:{line}")
                path = image_dir / f"{image_id}.JPEG"
                samples.append(Sample(image_id, index[wnid], str(require(path, "an image"))))
    if not samples:
        raise DatasetLayoutError(f"no ImageNet images under {image_dir}")
    extra_classes = [f"{w} {names[index[w]]}" for w in wnids[1000:]]
    if extra_classes:
        with_images = len({s.label for s in samples if s.label >= 1000})
        log.warning(
            "%s: %s names %d wnid(s) outside ImageNet-1k (%s%s); they join the candidate "
            "classes (%d in all; %d of them have images here) and metrics.json lists them as "
            "extra_classes. Remove those lines to evaluate on ImageNet-1k's 1000.",
            name,
            mapping_file,
            len(extra_classes),
            ", ".join(extra_classes[:5]),
            ", ..." if len(extra_classes) > 5 else "",
            len(names),
            with_images,
        )
    return ClassificationDataset(name, names, samples, extra_classes=extra_classes)


def imagenetv2(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """`<root>/<class index 0..999>/*.jpeg` (imagenetv2-*-format-val)."""
    root = require(Path(cfg.root), "the ImageNetV2 directory")
    _, names = _imagenet_table()
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < 1000:
            raise DatasetLayoutError(f"{folder}: expected folders named by class index 0..999")
        for img in list_images(folder):
            samples.append(Sample(f"{folder.name}/{img.stem}", int(folder.name), str(img)))
    if not samples:
        raise DatasetLayoutError(f"expected <class index>/<image> folders under {root}")
    return ClassificationDataset(name, names, samples)


def objectnet(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """`<root>/images/<folder>/*.png` + `<root>/mappings/folder_to_objectnet_label.json`."""
    root = require(Path(cfg.root), "the ObjectNet directory (objectnet-1.0)")
    mapping_file = require(
        root / "mappings" / "folder_to_objectnet_label.json", "ObjectNet's folder->label mapping"
    )
    mapping = json.loads(mapping_file.read_text("utf-8"))
    base = from_class_folders(name, require(root / "images", "ObjectNet's images/ folder"), str)
    unknown = [f for f in base.classnames if f not in mapping]
    if unknown:
        raise DatasetLayoutError(f"{mapping_file} lacks folders {unknown[:5]}")
    base.classnames = [mapping[f].lower() for f in base.classnames]
    base.crop_border = 2  # ObjectNet's images carry a thin red border that is not the object
    return base


# Caltech101 folder names whose plain reading is wrong or ambiguous (CLIP's readable names).
_CALTECH = {
    "Faces": "off-center face",
    "Faces_easy": "centered face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
    "airplanes": "airplane",
    "car_side": "side of a car",
    "yin_yang": "yin and yang symbol",
}


def caltech101(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """`<root>/101_ObjectCategories/<class>/image_*.jpg` (BACKGROUND_Google excluded).
    Caltech101 has no official test split: every image is used."""
    root = require(Path(cfg.root), "the Caltech101 directory")
    folders = root / "101_ObjectCategories"
    return from_class_folders(
        name,
        folders if folders.is_dir() else root,
        lambda f: _CALTECH.get(f, readable(f)),
        skip=("BACKGROUND_Google",),
    )


def _table(path: Path, what: str) -> list[list[str]]:
    rows = [line.split() for line in require(path, what).read_text("utf-8").splitlines()]
    return [r for r in rows if r]


def cub200(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """CUB_200_2011: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt."""
    root = require(Path(cfg.root), "the CUB_200_2011 directory")
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    classes = _table(root / "classes.txt", "CUB's classes.txt ('<id> 001.Name')")
    names = [readable(c[1].split(".", 1)[-1]) for c in classes]
    paths = dict(_table(root / "images.txt", "CUB's images.txt ('<id> <path>')"))
    labels = dict(_table(root / "image_class_labels.txt", "CUB's image_class_labels.txt"))
    is_train = dict(_table(root / "train_test_split.txt", "CUB's train_test_split.txt"))
    want = {"train": "1", "test": "0"}.get(cfg.split)
    samples = [
        Sample(i, int(labels[i]) - 1, str(root / "images" / p))
        for i, p in paths.items()
        if want is None or is_train.get(i) == want
    ]
    return ClassificationDataset(name, names, samples)


def food101(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """food-101: meta/classes.txt, meta/labels.txt, meta/{train,test}.txt, images/<class>/*.jpg."""
    root = require(Path(cfg.root), "the food-101 directory")
    if (root / "food-101").is_dir():
        root = root / "food-101"
    folders = require(root / "meta" / "classes.txt", "Food-101's meta/classes.txt").read_text()
    folders = folders.split()
    labels_file = root / "meta" / "labels.txt"
    names = (
        [n.strip().lower() for n in labels_file.read_text().splitlines() if n.strip()]
        if labels_file.exists()
        else [readable(f) for f in folders]
    )
    index = {f: i for i, f in enumerate(folders)}
    split = cfg.split if cfg.split in ("train", "test") else "test"
    listing = require(root / "meta" / f"{split}.txt", f"Food-101's meta/{split}.txt").read_text()
    samples = [
        Sample(key, index[key.split("/")[0]], str(root / "images" / f"{key}.jpg"))
        for key in listing.split()
    ]
    return ClassificationDataset(name, names, samples)


def gldv2(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """Google Landmarks v2 test: `test/a/b/c/<id>.jpg`, `recognition_solution_v2.1.csv`
    (id,landmarks,Usage; non-landmark images have no label and are dropped) and
    `train_label_to_category.csv` (landmark_id,category URL -> readable name). The classes are
    the landmarks that occur in the evaluated images."""
    root = require(Path(cfg.root), "the Google Landmarks v2 directory")
    solution = require(root / "recognition_solution_v2.1.csv", "GLDv2's recognition solution")
    categories = require(root / "train_label_to_category.csv", "GLDv2's label->category CSV")
    with open(categories, newline="", encoding="utf-8") as fh:
        category = {r["landmark_id"]: r["category"] for r in csv.DictReader(fh)}
    rows = []
    with open(solution, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r.get("landmarks", "").strip():
                rows.append((r["id"], r["landmarks"].split()[0]))
    ids = sorted({lm for _, lm in rows}, key=int)
    missing = [lm for lm in ids if lm not in category]
    if missing:
        raise DatasetLayoutError(f"{categories} lacks landmark ids {missing[:5]}")
    names = [unquote(category[lm].rsplit("Category:", 1)[-1]).replace("_", " ") for lm in ids]
    # Different landmark ids can share a Wikimedia title: keep options unambiguous.
    names = [f"{n} ({lm})" if names.count(n) > 1 else n for n, lm in zip(names, ids, strict=True)]
    index = {lm: i for i, lm in enumerate(ids)}
    samples = [
        Sample(i, index[lm], str(root / "test" / i[0] / i[1] / i[2] / f"{i}.jpg")) for i, lm in rows
    ]
    return ClassificationDataset(name, names, samples)


def flickr_sportlogos10(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """FlickrSportLogos-10 as class folders: `<root>/<split>/<brand>/*` or `<root>/<brand>/*`."""
    root = require(Path(cfg.root), "the FlickrSportLogos-10 directory")
    return from_class_folders(name, split_dir(root, cfg.split), lambda f: f.replace("_", " "))


def flowers102(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """Oxford 102 Flowers: jpg/image_%05d.jpg, imagelabels.mat (1..102), setid.mat (tstid...)."""
    from scipy.io import loadmat

    root = require(Path(cfg.root), "the Flowers102 directory")
    labels = loadmat(require(root / "imagelabels.mat", "Flowers102's imagelabels.mat"))
    setid = loadmat(require(root / "setid.mat", "Flowers102's setid.mat"))
    key = {"train": "trnid", "val": "valid", "test": "tstid"}.get(cfg.split, "tstid")
    label_of = labels["labels"].ravel()
    samples = [
        Sample(f"image_{i:05d}", int(label_of[i - 1]) - 1, str(root / "jpg" / f"image_{i:05d}.jpg"))
        for i in sorted(int(x) for x in setid[key].ravel())
    ]
    return ClassificationDataset(name, shipped_classnames("flowers102.txt"), samples)


_YEAR_LAST = re.compile(r"^(?P<model>.+?)\s+(?P<year>(19|20)\d\d)$")


def year_first(name: str) -> str:
    """The devkit's "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV" (the order
    VLMClassifier and most papers prompt with); names without a trailing year are kept."""
    m = _YEAR_LAST.match(name)
    return f"{m['year']} {m['model']}" if m else name


def stanford_cars(name: str, cfg: DatasetCfg) -> ClassificationDataset:
    """torchvision's layout: devkit/cars_meta.mat, cars_test_annos_withlabels.mat + cars_test/
    (train: devkit/cars_train_annos.mat + cars_train/). Names year-first unless
    `eval.datasets.<name>.year_first=false` (the devkit's year-last)."""
    from scipy.io import loadmat

    root = require(Path(cfg.root), "the Stanford Cars directory")
    meta_file = require(root / "devkit" / "cars_meta.mat", "Stanford Cars' devkit/cars_meta.mat")
    names = [str(n).strip() for n in loadmat(meta_file, squeeze_me=True)["class_names"]]
    if cfg.year_first:
        names = [year_first(n) for n in names]
    if cfg.split == "train":
        annos, images = root / "devkit" / "cars_train_annos.mat", root / "cars_train"
    else:
        annos, images = root / "cars_test_annos_withlabels.mat", root / "cars_test"
    table = loadmat(require(annos, "Stanford Cars' labelled annotations"), squeeze_me=True)
    rows = table["annotations"]
    samples = [
        Sample(
            str(r["fname"]).rsplit(".", 1)[0], int(r["class"]) - 1, str(images / str(r["fname"]))
        )
        for r in rows.ravel()
    ]
    return ClassificationDataset(name, names, samples)


LAYOUTS = {
    "imagenet": imagenet,
    "imagenetv2": imagenetv2,
    "objectnet": objectnet,
    "caltech101": caltech101,
    "cub200": cub200,
    "food101": food101,
    "gldv2": gldv2,
    "flickr_sportlogos10": flickr_sportlogos10,
    "flowers102": flowers102,
    "stanford_cars": stanford_cars,
}
# Every `eval.datasets.<name>.kind`: the layouts above and the generic sources.
READERS = {
    **LAYOUTS,
    "image_folder": lambda n, c: from_class_folders(n, split_dir(Path(c.root), c.split)),
    "csv": read_csv_source,
    "jsonl": read_jsonl_source,
    "parquet": read_parquet_source,
}


def load_dataset(name: str, cfg: DatasetCfg, seed: int = 1234) -> ClassificationDataset:
    """Read dataset `name` as configured, apply class-name overrides and sub-sampling."""
    if cfg.kind not in READERS:
        raise ValueError(f"eval.datasets.{name}.kind={cfg.kind!r}; choose from {sorted(READERS)}")
    if cfg.builtin:  # generated offline on first use (the demo's mini-classify)
        from llava_ablate.data.builtin import generate_builtin

        generate_builtin(cfg.builtin, Path(cfg.root))
    dataset = READERS[cfg.kind](name, cfg)
    if cfg.classnames:
        dataset.classnames = rename_classes(name, dataset.classnames, cfg.classnames)
    if len(set(dataset.classnames)) != len(dataset.classnames):
        dupes = sorted({c for c in dataset.classnames if dataset.classnames.count(c) > 1})
        raise DatasetLayoutError(
            f"{name}: duplicate class names {dupes[:5]} would make options ambiguous; "
            "disambiguate them in a class-names file (eval.datasets.<name>.classnames)"
        )
    return subsample(dataset, cfg.per_class, cfg.total, seed)
