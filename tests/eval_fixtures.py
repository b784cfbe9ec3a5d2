"""Tiny on-disk datasets in each layout the evaluator reads (images are 12x12 solid colours)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def img(path: Path, seed: int, size=(12, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = tuple(int(v) for v in np.random.default_rng(seed).integers(0, 255, 3))
    Image.new("RGB", size, rgb).save(path)
    return path


def class_folders(root: Path, classes: int, per: int) -> Path:
    """`classes` x `per` solid-colour images in `root/class NN/`, an image_folder dataset."""
    for c in range(classes):
        for i in range(per):
            img(root / f"class {c:02d}" / f"{i}.png", c * 100 + i, size=(6, 6))
    return root


def imagenet_folders(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per=2) -> Path:
    for c, w in enumerate(wnids):
        for i in range(per):
            img(root / "val" / w / f"ILSVRC2012_val_{c}{i:07d}.JPEG", c * 10 + i)
    return root


def imagenet_flat(root: Path) -> Path:
    rows = [("ILSVRC2012_val_00000001", "n01751748"), ("ILSVRC2012_val_00000002", "n09193705")]
    for i, (image_id, _) in enumerate(rows):
        img(root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{image_id}.JPEG", i)
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageId", "PredictionString"])
        for image_id, wnid in rows:
            w.writerow([image_id, f"{wnid} 1 2 3 4 {wnid} 5 6 7 8"])
    return root


def imagenetv2(root: Path) -> Path:
    for c in (0, 1, 999):
        img(root / str(c) / f"{c}abc.jpeg", c)
    return root


def objectnet(root: Path) -> Path:
    mapping = {"air_freshener": "Air freshener", "alarm_clock": "Alarm clock"}
    for i, folder in enumerate(mapping):
        img(root / "images" / folder / f"{i}.png", i, size=(20, 16))
    (root / "mappings").mkdir(parents=True)
    (root / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(mapping))
    return root


def caltech101(root: Path) -> Path:
    for i, c in enumerate(["Faces_easy", "Leopards", "BACKGROUND_Google", "dollar_bill"]):
        img(root / "101_ObjectCategories" / c / "image_0001.jpg", i)
    return root


def cub200(root: Path) -> Path:
    r = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    images = [(1, classes[0], 1), (2, classes[0], 0), (3, classes[1], 0)]
    (r / "images").mkdir(parents=True)
    (r / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    lines, labels, split = [], [], []
    for i, c, train in images:
        rel = f"{c}/{c.split('.')[1]}_{i:04d}.jpg"
        img(r / "images" / rel, i)
        lines.append(f"{i} {rel}\n")
        labels.append(f"{i} {classes.index(c) + 1}\n")
        split.append(f"{i} {train}\n")
    (r / "images.txt").write_text("".join(lines))
    (r / "image_class_labels.txt").write_text("".join(labels))
    (r / "train_test_split.txt").write_text("".join(split))
    return root


def food101(root: Path) -> Path:
    r = root / "food-101"
    (r / "meta").mkdir(parents=True)
    (r / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n")
    (r / "meta" / "labels.txt").write_text("Apple pie\nBaby back ribs\n")
    (r / "meta" / "test.txt").write_text("apple_pie/101\nbaby_back_ribs/202\n")
    (r / "meta" / "train.txt").write_text("apple_pie/303\n")
    for i, key in enumerate(["apple_pie/101", "baby_back_ribs/202", "apple_pie/303"]):
        img(r / "images" / f"{key}.jpg", i)
    return root


def gldv2(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ids = {"abc123": "7", "def456": "42", "0f0f0f": ""}
    with open(root / "recognition_solution_v2.1.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "landmarks", "Usage"])
        for i, lm in ids.items():
            w.writerow([i, lm, "Public"])
            img(root / "test" / i[0] / i[1] / i[2] / f"{i}.jpg", len(i))
    with open(root / "train_label_to_category.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["landmark_id", "category"])
        w.writerow(["7", "http://commons.wikimedia.org/wiki/Category:Eiffel_Tower"])
        w.writerow(["42", "http://commons.wikimedia.org/wiki/Category:Caf%C3%A9_de_Flore"])
    return root


def sportlogos(root: Path) -> Path:
    for i, c in enumerate(["adidas", "new_balance"]):
        img(root / "test" / c / f"{i}.jpg", i)
    return root


def flowers102(root: Path) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    labels = np.array([[1, 2, 102, 1]])
    for i in range(1, 5):
        img(root / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(root / "imagelabels.mat", {"labels": labels})
    savemat(root / "setid.mat", {"trnid": [[1]], "valid": [[2]], "tstid": [[3, 4]]})
    return root


def stanford_cars(root: Path) -> Path:
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names.reshape(1, -1)})
    annos = np.zeros((1, 2), dtype=[("fname", object), ("class", object)])
    for j, (fname, cls) in enumerate([("00001.jpg", 2), ("00002.jpg", 1)]):
        annos[0, j] = (fname, np.array([[cls]], dtype=np.uint8))
        img(root / "cars_test" / fname, j)
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": annos})
    return root


def generic_rows(root: Path) -> list[dict]:
    rows = []
    for i, label in enumerate(["cat", "dog", "cat"]):
        img(root / "imgs" / f"{i}.png", i)
        rows.append({"image": f"imgs/{i}.png", "label": label})
    return rows


def csv_source(root: Path) -> Path:
    rows = generic_rows(root)
    with open(root / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows(rows)
    return root / "data.csv"


def jsonl_source(root: Path) -> Path:
    rows = generic_rows(root)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "data.jsonl"


def parquet_source(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for i, label in enumerate(["cat", "dog", "bird"]):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append(label)
    pq.write_table(pa.table({"image": images, "label": labels}), root / "data.parquet")
    return root / "data.parquet"


def digits_folder(root: Path, per_class: int = 3, num_classes: int = 10) -> Path:
    """Real images: scikit-learn's handwritten digits as `root/<digit name>/<i>.png`."""
    from sklearn.datasets import load_digits

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    d = load_digits()
    seen: dict[int, int] = {}
    for image, target in zip(d.images, d.target, strict=True):
        if target >= num_classes or seen.get(target, 0) >= per_class:
            continue
        seen[target] = seen.get(target, 0) + 1
        arr = (image / 16 * 255).astype(np.uint8)
        path = root / names[target] / f"{seen[target]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert("RGB").resize((32, 32)).save(path)
    return root
