"""Converters -> webdataset shards + manifests; bad records counted per reason; resumable."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from llava_ablate.config import SourceCfg
from llava_ablate.data.mixture import MixtureNotBuilt, open_mixture, select_positions
from llava_ablate.data.shards import StaleShards, build_mixture, build_source
from llava_ablate.data.sources import SourceError

from datagen import data_cfg, image_bytes, llava_rows, write_llava_source


def _samples(shard_dir):
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def test_llava_json_round_trip_keeps_conversations_and_image_bytes(tmp_path):
    src = write_llava_source(tmp_path, "src", 30)
    manifest = build_source(src, tmp_path / "shards", samples_per_shard=8, workers=1)
    assert manifest["count"] == 30 and len(manifest["shards"]) == 4
    assert [s["count"] for s in manifest["shards"]] == [8, 8, 8, 6]
    assert manifest["images"] == 22 and manifest["image_width"]["min"] == 20
    rows = {r["id"]: r for r in llava_rows(30, "src")}
    for sample in _samples(tmp_path / "shards" / "src"):
        meta = json.loads(sample["json"])
        assert meta["conversations"] == rows[meta["id"]]["conversations"]
        if "image" in rows[meta["id"]]:
            assert sample["img0.png"] == image_bytes(meta["index"])  # stored as-is
        else:
            assert meta["images"] == []


def test_bad_records_are_skipped_and_counted_per_reason(tmp_path):
    (tmp_path / "ok.png").write_bytes(image_bytes(1))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    convo = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    rows = [
        {"id": "good", "image": "ok.png", "conversations": convo},
        {"id": "corrupt", "image": "corrupt.png", "conversations": convo},
        {"id": "missing", "image": "gone.png", "conversations": convo},
        {
            "id": "no_tag",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}],
        },
        {"id": "no_answer", "conversations": [{"from": "human", "value": "Q?"}]},
        {"id": "bad_role", "conversations": [{"from": "robot", "value": "x"}]},
        {"id": "no_convo"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    src = SourceCfg(name="bad", path=str(tmp_path / "d.json"), image_root=str(tmp_path))
    manifest = build_source(src, tmp_path / "shards", samples_per_shard=3, workers=1)
    assert manifest["count"] == 1
    assert manifest["skipped"] == {
        "corrupt_image": 1,
        "missing_image": 1,
        "image_tag_mismatch": 1,
        "empty_conversation": 1,
        "malformed_conversation": 1,
        "malformed_record": 1,
    }
    listed = [json.loads(line) for line in (tmp_path / "shards/bad/skipped.jsonl").open()]
    assert sorted(s["id"] for s in listed) == sorted(
        ["corrupt", "missing", "no_tag", "no_answer", "bad_role", "no_convo"]
    )
    assert {s["reason"] for s in listed} == set(manifest["skipped"])


def test_build_is_deterministic_parallel_and_resumable(tmp_path):
    src = write_llava_source(tmp_path, "src", 40)
    a = build_source(src, tmp_path / "a", samples_per_shard=8, workers=1)
    b = build_source(src, tmp_path / "b", samples_per_shard=8, workers=2)
    assert a == b
    for name in [s["file"] for s in a["shards"]]:
        assert (tmp_path / "a/src" / name).read_bytes() == (tmp_path / "b/src" / name).read_bytes()
    # A crash mid-build: one shard unfinished (sidecar missing, a .tmp left), no manifest.
    d = tmp_path / "a/src"
    (d / "manifest.json").unlink()
    (d / "src-000002.json").unlink()
    (d / "src-000002.tar.tmp").write_bytes(b"partial")
    done = (d / "src-000001.tar").stat().st_mtime_ns
    c = build_source(src, tmp_path / "a", samples_per_shard=8, workers=1)
    assert c == a and not list(d.glob("*.tmp"))
    assert (d / "src-000001.tar").stat().st_mtime_ns == done  # finished shards were kept


def test_changed_source_needs_force(tmp_path):
    src = write_llava_source(tmp_path, "src", 10)
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    write_llava_source(tmp_path, "src", 12)
    with pytest.raises(StaleShards, match="--force"):
        build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    assert (
        build_source(src, tmp_path / "s", samples_per_shard=8, workers=1, force=True)["count"] == 12
    )


def test_unreleased_and_missing_sources_fail_naming_them(tmp_path):
    data = data_cfg("mix", [SourceCfg(name="secret", path="x.json", released=False)], tmp_path)
    with pytest.raises(SourceError, match="never released.*secret"):
        build_mixture(data)
    with pytest.raises(MixtureNotBuilt, match="never released.*secret"):
        open_mixture(data, seed=0)
    data = data_cfg("mix", [SourceCfg(name="gone", path=str(tmp_path / "gone.json"))], tmp_path)
    with pytest.raises(SourceError, match="gone.json"):
        build_mixture(data)
    with pytest.raises(MixtureNotBuilt, match="llava-ablate data build data=mix"):
        open_mixture(data, seed=0)


def test_parquet_source(tmp_path):
    rows = llava_rows(12, "pq")
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "image": [
                {"bytes": image_bytes(i, "JPEG"), "path": None} if "image" in r else None
                for i, r in enumerate(rows)
            ],
            "conversations": [r["conversations"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=5)
    src = SourceCfg(name="pq", path=str(tmp_path / "*.parquet"), format="parquet")
    manifest = build_source(src, tmp_path / "s", samples_per_shard=5, workers=1)
    assert manifest["count"] == 12 and manifest["images"] == 9
    assert any("img0.jpg" in s for s in _samples(tmp_path / "s/pq"))


@pytest.mark.parametrize("layout", ["folder", "csv", "jsonl"])
def test_classification_sources_become_instructions(tmp_path, layout):
    labels = ["0", "1", "2"] if layout != "folder" else ["black_footed_ferret", "cat", "dog"]
    entries = []
    for k, label in enumerate(labels):
        for j in range(3):
            rel = f"{label}/{j}.png"
            (tmp_path / label).mkdir(exist_ok=True)
            (tmp_path / rel).write_bytes(image_bytes(k * 3 + j))
            entries.append((rel, label))
    names = tmp_path / "names.txt"
    names.write_text("ferret\ncat\ndog\n")
    if layout == "folder":
        path, class_names = tmp_path, None
    elif layout == "csv":
        path = tmp_path / "labels.csv"
        path.write_text("image,label\n" + "".join(f"{r},{lab}\n" for r, lab in entries))
        class_names = str(names)
    else:
        path = tmp_path / "labels.jsonl"
        path.write_text(
            "".join(json.dumps({"image": r, "label": lab}) + "\n" for r, lab in entries)
        )
        class_names = str(names)
    src = SourceCfg(
        name="cls",
        path=str(path),
        format="classification",
        image_root=str(tmp_path),
        class_names=class_names,
        questions=["What is this?", "Name the animal."],
        answer="It is a {name}.",
    )
    manifest = build_source(src, tmp_path / "s", samples_per_shard=4, workers=1)
    assert manifest["count"] == 9
    answers = {
        json.loads(s["json"])["conversations"][1]["value"] for s in _samples(tmp_path / "s/cls")
    }
    expected = (
        {"It is a black footed ferret.", "It is a cat.", "It is a dog."}
        if layout == "folder"
        else {"It is a ferret.", "It is a cat.", "It is a dog."}
    )
    assert answers == expected
    questions = {
        json.loads(s["json"])["conversations"][0]["value"] for s in _samples(tmp_path / "s/cls")
    }
    assert questions == {"<image>\nWhat is this?", "<image>\nName the animal."}


@pytest.mark.parametrize(
    "strategy,expected",
    [("all", list(range(10))), ("first:30%", [0, 1, 2]), ("end:20%", [8, 9]), ("first:5%", [0])],
)
def test_sampling_strategies(strategy, expected):
    assert select_positions(10, strategy, seed=0) == expected


def test_random_sampling_is_seeded():
    a = select_positions(100, "random:10", seed=1)
    assert a == select_positions(100, "random:10", seed=1) and len(set(a)) == 10
    assert a != select_positions(100, "random:10", seed=2)
    with pytest.raises(ValueError, match="first:N%"):
        select_positions(10, "half", seed=0)


def test_classification_mcq_samples_use_the_evaluators_format(tmp_path):
    for k, label in enumerate(["cat", "dog", "fox", "owl", "emu"]):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        (tmp_path / "imgs" / label / "0.png").write_bytes(image_bytes(k))
    (tmp_path / "names.csv").write_text(
        "cat,tabby cat,animal\ndog,dog,animal\nfox,fox,animal\nowl,owl,bird\nemu,emu,bird\n"
    )
    src = SourceCfg(
        name="mcq",
        path=str(tmp_path / "imgs"),
        format="classification",
        class_names=str(tmp_path / "names.csv"),
        questions=["What is it?"],
        mcq_fraction=1.0,
        mcq_options=4,
    )
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    names = {image_bytes(k): n for k, n in enumerate(["tabby cat", "dog", "fox", "owl", "emu"])}
    for sample in _samples(tmp_path / "s/mcq"):
        human, gpt = json.loads(sample["json"])["conversations"]
        lines = human["value"].split("\n")
        assert lines[0] == "<image>" and lines[1] == "What is it?"
        assert lines[-1] == "Answer with the option's letter from the given choices directly."
        options = dict(line.split(". ", 1) for line in lines[2:-1])
        assert list(options) == ["A", "B", "C", "D"]
        assert options[gpt["value"]] == names[sample["img0.png"]]  # the letter is the truth
    groups = SourceCfg(
        name="grp",
        path=str(tmp_path / "imgs"),
        format="classification",
        class_names=str(tmp_path / "names.csv"),
        questions=["Kind?"],
        answer="It is a {group}: {name}.",
    )
    build_source(groups, tmp_path / "s", samples_per_shard=8, workers=1)
    answers = {
        json.loads(s["json"])["conversations"][1]["value"] for s in _samples(tmp_path / "s/grp")
    }
    assert "It is a animal: tabby cat." in answers and "It is a bird: emu." in answers
