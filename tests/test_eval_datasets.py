"""Every dataset layout read from a tiny fixture; malformed layouts name the missing file."""

from __future__ import annotations

import eval_fixtures as fx
import pytest

from llava_ablate.eval.datasets import DatasetLayoutError, subsample
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval_config import DatasetCfg


def _load(kind, root, **kw):
    return load_dataset("ds", DatasetCfg(kind=kind, root=str(root), **kw))


def _labels(ds):
    return sorted((s.id, ds.classnames[s.label]) for s in ds.samples)


def test_imagenet_class_folders(tmp_path):
    ds = _load("imagenet", fx.imagenet_folders(tmp_path), split="val")
    assert len(ds.classnames) == 1000 and len(set(ds.classnames)) == 1000
    assert {c for _, c in _labels(ds)} == {"tench", "goldfish", "great white shark"}
    assert len(ds.samples) == 6
    img = ds.load_image(ds.samples[0])
    assert img.mode == "RGB" and img.size == (12, 12)


def test_imagenet_flat_with_solution_csv(tmp_path):
    ds = _load("imagenet", fx.imagenet_flat(tmp_path), split="val")
    assert _labels(ds) == [
        ("ILSVRC2012_val_00000001", "sea snake"),
        ("ILSVRC2012_val_00000002", "mountain"),
    ]


def test_imagenet_names_disambiguated():
    from llava_ablate.eval.datasets import shipped_classnames

    names = shipped_classnames("imagenet.tsv")
    assert names[657] == "missile" and names[744] == "projectile"
    assert names[836] == "sunglass" and names[837] == "sunglasses"
    assert len(set(names)) == 1000


def test_imagenet_missing_solution_names_the_file(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetLayoutError, match="LOC_val_solution.csv"):
        _load("imagenet", tmp_path, split="val")


def test_imagenetv2(tmp_path):
    ds = _load("imagenetv2", fx.imagenetv2(tmp_path))
    assert {c for _, c in _labels(ds)} == {"tench", "goldfish", "toilet paper"}


def test_objectnet_crops_border(tmp_path):
    ds = _load("objectnet", fx.objectnet(tmp_path))
    assert ds.classnames == ["air freshener", "alarm clock"]
    assert ds.load_image(ds.samples[0]).size == (16, 12)  # 20x16 minus the 2-px border


def test_caltech101_names_and_background_dropped(tmp_path):
    ds = _load("caltech101", fx.caltech101(tmp_path))
    assert ds.classnames == ["centered face", "leopard", "dollar bill"]


def test_cub200_test_split(tmp_path):
    ds = _load("cub200", fx.cub200(tmp_path))
    assert ds.classnames == ["black footed albatross", "laysan albatross"]
    assert _labels(ds) == [("2", "black footed albatross"), ("3", "laysan albatross")]


def test_cub200_missing_file(tmp_path):
    fx.cub200(tmp_path)
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="train_test_split.txt"):
        _load("cub200", tmp_path)


def test_food101(tmp_path):
    ds = _load("food101", fx.food101(tmp_path))
    assert _labels(ds) == [("apple_pie/101", "apple pie"), ("baby_back_ribs/202", "baby back ribs")]


def test_gldv2_drops_non_landmarks_and_decodes_names(tmp_path):
    ds = _load("gldv2", fx.gldv2(tmp_path))
    assert _labels(ds) == [("abc123", "Eiffel Tower"), ("def456", "Café de Flore")]


def test_flickr_sportlogos(tmp_path):
    ds = _load("flickr_sportlogos10", fx.sportlogos(tmp_path))
    assert ds.classnames == ["adidas", "new balance"]


def test_flowers102(tmp_path):
    ds = _load("flowers102", fx.flowers102(tmp_path))
    assert _labels(ds) == [("image_00003", "blackberry lily"), ("image_00004", "pink primrose")]


def test_stanford_cars(tmp_path):
    ds = _load("stanford_cars", fx.stanford_cars(tmp_path))
    assert _labels(ds) == [  # year-first, as VLMClassifier writes them
        ("00001", "2012 Acura RL Sedan"),
        ("00002", "2000 AM General Hummer SUV"),
    ]


@pytest.mark.parametrize("maker,kind", [(fx.csv_source, "csv"), (fx.jsonl_source, "jsonl")])
def test_generic_tables(tmp_path, maker, kind):
    ds = _load(kind, maker(tmp_path))
    assert ds.classnames == ["cat", "dog"]
    assert [ds.classnames[s.label] for s in ds.samples] == ["cat", "dog", "cat"]
    assert ds.load_image(ds.samples[1]).size == (12, 12)


def test_parquet_with_image_bytes(tmp_path):
    ds = _load("parquet", fx.parquet_source(tmp_path))
    assert ds.classnames == ["bird", "cat", "dog"]
    bird = next(s for s in ds.samples if ds.classnames[s.label] == "bird")
    assert ds.load_image(bird).getpixel((0, 0)) == (160, 0, 0)


def test_generic_wrong_column_is_named(tmp_path):
    path = fx.csv_source(tmp_path)
    with pytest.raises(DatasetLayoutError, match="'label_col'"):
        _load("csv", path, label_column="label_col")


def test_image_folder_and_subsampling(tmp_path):
    root = fx.digits_folder(tmp_path / "digits", per_class=3)
    ds = _load("image_folder", root)
    assert len(ds.classnames) == 10 and len(ds.samples) == 30
    one = subsample(ds, per_class=1, total=None, seed=0)
    assert sorted(s.label for s in one.samples) == list(range(10))
    assert subsample(ds, None, 7, seed=0).samples == subsample(ds, None, 7, seed=0).samples
    assert subsample(ds, None, 7, seed=0).samples != subsample(ds, None, 7, seed=1).samples


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetLayoutError, match="food-101 directory"):
        _load("food101", tmp_path / "nope")


def test_classnames_file_keyed_or_positional(tmp_path):
    root = fx.digits_folder(tmp_path / "digits", per_class=1, num_classes=3)
    keyed = tmp_path / "classes.csv"  # any order: matched by folder name
    keyed.write_text("two,digit Two,digit\nzero,digit Zero,digit\none,digit One,digit\n")
    ds = _load("image_folder", root, classnames=str(keyed))
    assert ds.classnames == ["digit One", "digit Two", "digit Zero"]  # folders sorted
    assert {s.id.split("/")[0]: ds.classnames[s.label] for s in ds.samples}["zero"] == "digit Zero"
    keyed.write_text("zero,Zero\none,One\n")
    with pytest.raises(DatasetLayoutError, match=r"names no class for \['two'\]"):
        _load("image_folder", root, classnames=str(keyed))
    positional = tmp_path / "names.txt"
    positional.write_text("uno\ndos\ncero\n")
    assert _load("image_folder", root, classnames=str(positional)).classnames == [
        "uno",
        "dos",
        "cero",
    ]
    positional.write_text("uno\n")
    with pytest.raises(DatasetLayoutError, match="has 1 names but ds has 3 classes"):
        _load("image_folder", root, classnames=str(positional))
