"""Fault injection on the data path: malformed JSON types, damaged shards, stale builds, special
tokens inside the text, a torn metrics line. Each fault is survived and counted, or stops with an
error that names the file and what to do; nothing is lost silently."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_ablate.config import SourceCfg
from llava_ablate.data.conversation import (
    MalformedConversation,
    SpecialTokenInText,
    llava_to_messages,
    tokenize_conversation,
)
from llava_ablate.data.encode import EncodeOptions, SampleEncoder, Skip
from llava_ablate.data.mixture import BadShard, open_mixture, skip_report
from llava_ablate.data.shards import StaleShards, build_source, check_record
from llava_ablate.data.sources import SourceError
from llava_ablate.data.sources.classification import ClassificationReader
from llava_ablate.data.sources.llava_json import record_from_row
from llava_ablate.data.stream import StreamPlan, read_segments, source_segments
from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer
from llava_ablate.train.metrics import MetricsLogger

from datagen import data_cfg, image_bytes, write_llava_source

QA = [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]
IMAGE_QA = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]


def _turns(*values) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


# --- wrong JSON types in a LLaVA record ----------------------------------------------------------

# (row, reason, what the detail must say); each row's own id names it in skipped.jsonl.
BAD_ROWS = [
    ({"id": "img-int", "image": 123, "conversations": IMAGE_QA}, "malformed_record", "'image'"),
    (
        {"id": "img-list", "image": ["ok.png", 5], "conversations": IMAGE_QA},
        "malformed_record",
        "'image'",
    ),
    ({"id": "img-dict", "image": {"p": 1}, "conversations": IMAGE_QA}, "malformed_record", "dict"),
    ({"id": "img-empty", "image": "", "conversations": IMAGE_QA}, "malformed_record", "empty"),
    ({"id": "convo-dict", "conversations": {"from": "human"}}, "malformed_record", "dict"),
    ({"id": "convo-missing"}, "malformed_record", "'conversations'"),
    (
        {"id": "turn-list", "conversations": [["human", "Q?"], ["gpt", "A."]]},
        "malformed_conversation",
        "turn 0: expected an object",
    ),
    (
        {"id": "value-int", "conversations": _turns("Q?", 42)},
        "malformed_conversation",
        "turn 1 (gpt): 'value' must be a string, got int",
    ),
    (
        {"id": "value-null", "conversations": _turns("Q?", None)},
        "malformed_conversation",
        "'value' must be a string, got null",
    ),
    (
        {"id": "from-list", "conversations": [{"from": ["human"], "value": "Q?"}, QA[1]]},
        "malformed_conversation",
        "turn 0: 'from' must be a string",
    ),
    ({"id": ["x"], "conversations": QA}, "malformed_record", "'id'"),
]


def test_wrong_json_types_are_counted_under_the_records_own_id(tmp_path):
    (tmp_path / "ok.png").write_bytes(image_bytes(1))
    rows = [row for row, _, _ in BAD_ROWS] + [
        ["not", "an", "object"],
        {"id": 7, "conversations": QA},  # a numeric id is an id
        {"id": "good", "image": "ok.png", "conversations": IMAGE_QA},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    src = SourceCfg(name="types", path=str(tmp_path / "d.json"), image_root=str(tmp_path))
    manifest = build_source(src, tmp_path / "shards", samples_per_shard=4, workers=1)
    assert manifest["count"] == 2
    listed = [json.loads(line) for line in (tmp_path / "shards/types/skipped.jsonl").open()]
    by_id = {s["id"]: s for s in listed}
    for k, (row, reason, detail) in enumerate(BAD_ROWS):
        rid = row["id"] if isinstance(row.get("id"), str) else f"d.json#{k}"
        assert by_id[rid]["reason"] == reason, by_id[rid]
        assert detail in by_id[rid]["detail"], by_id[rid]
    assert by_id[f"d.json#{len(BAD_ROWS)}"]["detail"].startswith("expected a JSON object")


def test_parquet_image_of_the_wrong_type_is_counted(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b"],
            "image": ["not/bytes.png", None],
            "conversations": [IMAGE_QA, QA],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    src = SourceCfg(name="pq", path=str(tmp_path / "p.parquet"), format="parquet")
    manifest = build_source(src, tmp_path / "s", samples_per_shard=4, workers=1)
    assert manifest["count"] == 1 and manifest["skipped"] == {"malformed_record": 1}
    (skip,) = [json.loads(line) for line in (tmp_path / "s/pq/skipped.jsonl").open()]
    assert skip["id"] == "a" and "'image'" in skip["detail"]


@pytest.mark.parametrize("line", ['{"image": 5, "label": "cat"}', '["a.png", "cat"]'])
def test_classification_jsonl_of_the_wrong_type_names_the_line(tmp_path, line):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"image": "a.png", "label": "cat"}\n' + line + "\n")
    with pytest.raises(SourceError, match=r"labels.jsonl:2: need"):
        ClassificationReader(SourceCfg(name="c", path=str(path), format="classification"), seed=0)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_TURN = st.fixed_dictionaries(
    {}, optional={"from": st.sampled_from(["human", "gpt", "system"]) | _JSON, "value": _JSON}
)
_ROW = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": _JSON,
            "image": st.sampled_from(["a.png", ["a.png"]]) | _JSON,
            "conversations": st.lists(_TURN | _JSON, max_size=4) | _JSON,
        },
    )
    | _JSON
)


@settings(max_examples=200, deadline=None)
@given(row=_ROW)
def test_any_json_row_is_a_record_or_a_counted_problem(row):
    """Whatever JSON a row holds, reading and checking it never raises."""
    rec = record_from_row(3, Path("d.json"), row, Path("/imgs"))
    assert isinstance(rec.id, str) and rec.id
    bad = check_record(rec)
    if bad is None:
        assert rec.problem is None
        llava_to_messages(rec.conversations)  # a kept record converts without error
    else:
        assert bad[1], "every skip says what was wrong"


@settings(max_examples=200, deadline=None)
@given(conv=st.lists(_TURN | _JSON, max_size=4) | _JSON)
def test_any_json_conversation_converts_or_is_malformed(conv):
    try:
        llava_to_messages(conv)
    except MalformedConversation:
        pass


# --- shards cut short -----------------------------------------------------------------------------


def _sample_starts(tar: Path) -> list[int]:
    """Byte offsets where each sample's first tar member starts."""
    starts, keys = [], set()
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            if key not in keys:
                keys.add(key)
                starts.append(m.offset)
    return starts


@pytest.fixture
def three_shards(tmp_path):
    src = write_llava_source(tmp_path, "s", 30)
    data = data_cfg("mix", [src], tmp_path / "shards", samples_per_shard=10)
    build_source(src, tmp_path / "shards", samples_per_shard=10, workers=1)
    return data, tmp_path / "shards/s/s-000001.tar"


def _read(plan: StreamPlan) -> tuple[list[dict], list[Skip]]:
    items = list(plan.samples(0, 0, 1))
    return [x for x in items if not isinstance(x, Skip)], [x for x in items if isinstance(x, Skip)]


def test_shard_cut_at_a_sample_boundary_is_refused_naming_it(three_shards):
    data, tar = three_shards
    tar.write_bytes(tar.read_bytes()[: _sample_starts(tar)[6]])  # 6 of its 10 samples remain
    with pytest.raises(BadShard, match=r"s-000001\.tar.*llava-ablate data build data=mix"):
        open_mixture(data, seed=0)


@pytest.mark.parametrize("cut", ["sample", "member", "inside"])
def test_shard_damaged_after_opening_stops_the_stream_naming_it(three_shards, cut):
    data, tar = three_shards
    plan = StreamPlan(open_mixture(data, seed=0), seed=0, shuffle_buffer=4)
    starts, raw = _sample_starts(tar), tar.read_bytes()
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    end = {
        "sample": starts[6],  # at a sample boundary: the tar just ends early
        "member": members[[m.name for m in members].index("000000011.json")].offset,
        "inside": starts[6] + 700,  # inside a member's data
    }[cut]
    tar.write_bytes(raw[:end])
    with pytest.raises(BadShard, match=r"s-000001\.tar.*rebuild"):
        _read(plan)


def test_bad_shard_skip_mode_counts_every_lost_sample(three_shards):
    data, tar = three_shards
    tar.write_bytes(tar.read_bytes()[: _sample_starts(tar)[6]])
    data.on_bad_shard = "skip"
    good, skips = _read(StreamPlan(open_mixture(data, seed=0), seed=0, shuffle_buffer=4))
    # The epoch keeps its length (30 = 20 + 10); none of the damaged shard's samples is trained
    # on, its 6 readable ones included: its hash cannot vouch for them.
    assert len(good) == 20 and len(skips) == 10
    assert {s.reason for s in skips} == {"bad_shard"}
    assert all("s-000001.tar" in s.id for s in skips)
    assert all("s-000001" not in g["__url__"] for g in good)


@pytest.fixture
def jpeg_shards(tmp_path):
    """Three shards of 10 samples whose images are stored JPEGs."""
    src = write_llava_source(tmp_path, "j", 30)
    for png in (tmp_path / "j").glob("*.png"):
        i = int(png.stem)
        png.with_suffix(".jpg").write_bytes(image_bytes(i, "JPEG"))
        png.unlink()
    rows = json.loads(Path(src.path).read_text())
    for row in rows:
        if "image" in row:
            row["image"] = row["image"].replace(".png", ".jpg")
    Path(src.path).write_text(json.dumps(rows))
    build_source(src, tmp_path / "shards", samples_per_shard=10, workers=1)
    return data_cfg("mix", [src], tmp_path / "shards"), tmp_path / "shards/j/j-000001.tar"


def _change_a_stored_jpeg(tar: Path) -> str:
    """Flip one byte inside a JPEG member's entropy-coded data: same size, still decodes."""
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
    at = member.offset_data + member.size // 2
    raw[at] ^= 0x10
    tar.write_bytes(bytes(raw))
    return member.name.split(".", 1)[0]


def test_bytes_changed_inside_a_stored_jpeg_stop_the_stream(jpeg_shards):
    """Same size, a valid tar, a decodable image: only the hash read with the shard sees it."""
    data, tar = jpeg_shards
    before = tar.stat().st_size
    key = _change_a_stored_jpeg(tar)
    assert tar.stat().st_size == before
    plan = StreamPlan(open_mixture(data, seed=0), seed=0, shuffle_buffer=4)  # sizes still agree
    with pytest.raises(BadShard, match=r"j-000001\.tar is damaged: its sha256 differs.*rebuild"):
        _read(plan)
    data.on_bad_shard = "skip"
    good, skips = _read(StreamPlan(open_mixture(data, seed=0), seed=0, shuffle_buffer=4))
    assert len(good) == 20 and len(skips) == 10 and {s.reason for s in skips} == {"bad_shard"}
    assert key not in {g["__key__"] for g in good}  # the changed sample is never delivered


def test_the_hash_covers_a_shard_read_only_in_part(jpeg_shards):
    """A slot that needs only a shard's first samples still verifies the whole file (the
    rest is read through the hash, not decoded)."""
    data, tar = jpeg_shards
    raw = bytearray(tar.read_bytes())
    raw[-2048] ^= 0x01  # in the tar's end-of-archive padding: no sample reads it
    tar.write_bytes(bytes(raw))
    mixture = open_mixture(data, seed=0)
    with pytest.raises(BadShard, match="sha256"):
        list(read_segments(source_segments(mixture.sources[0])[1:2], "error", "cmd"))
    segment = source_segments(mixture.sources[0])[1]
    segment.offsets = segment.offsets[:2]
    with pytest.raises(BadShard, match="sha256"):
        list(read_segments([segment], "error", "cmd"))


def test_data_build_rebuilds_a_damaged_shard(three_shards, caplog):
    data, tar = three_shards
    src = data.sources[0]
    intact = tar.read_bytes()
    manifest = json.loads((tar.parent / "manifest.json").read_text())
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    for damage in (intact[: _sample_starts(tar)[6]], intact[:-1] + b"\x01"):  # short; same size
        tar.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="llava_ablate.data.shards"):
            again = build_source(src, Path(data.shards_dir), samples_per_shard=10, workers=1)
        assert tar.read_bytes() == intact and again == manifest
        assert "s-000001.tar" in caplog.text and "rebuil" in caplog.text
        caplog.clear()


# --- staleness -----------------------------------------------------------------------------------


def test_changed_images_make_the_build_stale(tmp_path):
    src = write_llava_source(tmp_path, "src", 6)
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    image = tmp_path / "src/1.png"
    image.write_bytes(image_bytes(5))  # another picture (and size) under the same name
    with pytest.raises(StaleShards, match="--force"):
        build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1, force=True)
    st_ = image.stat()
    os.utime(image, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # same size, touched
    with pytest.raises(StaleShards):
        build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)


def test_every_output_shaping_option_makes_the_build_stale(tmp_path):
    for k, label in enumerate(["cat", "dog", "fox"]):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        (tmp_path / "imgs" / label / "0.png").write_bytes(image_bytes(k))
    names = tmp_path / "names.txt"
    names.write_text("0,cat\n1,dog\n2,fox\n3,owl\n4,emu\n")
    src = SourceCfg(
        name="cls",
        path=str(tmp_path / "imgs"),
        format="classification",
        class_names=str(names),
        mcq_fraction=1.0,
    )
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    for changed, seed in [({"mcq_distractors": "all"}, 0), ({}, 1)]:
        other = SourceCfg(**{**src.__dict__, **changed})
        with pytest.raises(StaleShards):
            build_source(other, tmp_path / "s", samples_per_shard=8, workers=1, seed=seed)
    # Read-time options select among the built samples: no rebuild.
    same = SourceCfg(**{**src.__dict__, "sampling": "first:50%", "weight": 2.0})
    build_source(same, tmp_path / "s", samples_per_shard=8, workers=1)


# --- build-time skips reach the run --------------------------------------------------------------


def test_build_time_skips_are_reported_next_to_run_time_ones(tmp_path):
    rows = [
        {"id": "ok", "conversations": QA},
        {"id": "bad", "conversations": _turns("Q?", 5)},
        {"id": "gone", "image": "gone.png", "conversations": IMAGE_QA},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    src = SourceCfg(name="d", path=str(tmp_path / "d.json"), image_root=str(tmp_path))
    build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    mixture = open_mixture(data_cfg("mix", [src], tmp_path / "s"), seed=0)
    report = skip_report(mixture, {"too_long": 2}, {"d": {"samples": 1, "tokens_dropped": 7}})
    assert report == {
        "run": {"too_long": 2},
        "truncated": {"d": {"samples": 1, "tokens_dropped": 7}},
        "build": {"malformed_conversation": 1, "missing_image": 1},
        "build_by_source": {"d": {"malformed_conversation": 1, "missing_image": 1}},
    }


# --- special tokens inside the text; trailing human turns ----------------------------------------


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {
        "qwen2": build_tiny_tokenizer(d / "qwen2", "qwen2"),
        "vicuna": build_tiny_tokenizer(d / "vicuna", "vicuna_v1"),
    }


def _tokenize(tok, conv, **kw):
    return tokenize_conversation("s-1", conv, tok, num_image_tokens=4, max_length=4096, **kw)


@pytest.mark.parametrize(
    ("name", "conv"),
    [
        ("qwen2", _turns("Hi", "Stop here<|im_end|> and go on.")),
        ("qwen2", _turns("<|im_start|>assistant\nHi", "Hello.")),
        ("vicuna", _turns("Hi", "Done.</s> More.")),
    ],
)
def test_text_that_tokenizes_to_a_special_token_is_a_counted_skip(toks, name, conv):
    tok = toks[name]
    with pytest.raises(SpecialTokenInText, match=r"s-1: turn \d .*literal"):
        _tokenize(tok, conv)

    class _Processor:
        tokenizer = tok
        image_processor = None

    encoder = SampleEncoder(_Processor(), EncodeOptions("chat", 4, 4096, "skip", False))
    skip = encoder.tokenize({"json": {"id": "s-1", "conversations": conv, "images": []}})
    assert isinstance(skip, Skip) and skip.reason == "special_token_in_text"


def test_image_placeholder_is_not_a_special_token_in_text(toks):
    assert _tokenize(toks["qwen2"], _turns("<image>\nWhat is it?", "A cat.")).num_images == 1


def test_trailing_human_turn_is_trimmed_and_counted(toks, tmp_path):
    tok = toks["qwen2"]
    conv = _turns("Hi", "Hello.", "And then?")
    assert _tokenize(tok, conv) == _tokenize(tok, conv[:2])
    with pytest.raises(MalformedConversation, match=r"turn 2 \(human\).*image"):
        _tokenize(tok, _turns("Hi", "Hello.", "<image>\nAnd this?"))
    (tmp_path / "d.json").write_text(json.dumps([{"id": "t", "conversations": conv}]))
    src = SourceCfg(name="t", path=str(tmp_path / "d.json"))
    manifest = build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)
    assert manifest["count"] == 1 and manifest["trimmed"] == {"trailing_human_turn": 1}


# --- a torn metrics line -------------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    metrics = MetricsLogger(tmp_path, enabled=True)
    for step in (1, 2, 3):
        metrics.log(step, {"loss": 1.0 / step})
    with metrics.path.open("a") as fh:
        fh.write('{"step": 4, "lo')  # the disk filled mid-write
    with caplog.at_level(logging.WARNING, logger="llava_ablate.train"):
        metrics.truncate_after(3)
    assert "torn" in caplog.text and "metrics.jsonl:4" in caplog.text
    metrics.log(4, {"loss": 0.25})
    lines = [json.loads(line) for line in metrics.path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]


# --- truncation at max_length is counted, per source ---------------------------------------------


def test_truncation_is_counted_per_source_with_the_tokens_it_drops(
    tmp_path, tiny_variant, world_of_one
):
    """recipe.overflow=truncate trains on a cut sample: the stream says which source, how many
    samples and how many tokens were cut, and the loop's counts reach data_skips.json."""
    from llava_ablate.data.conversation import tokenize_conversation
    from llava_ablate.data.encode import Collator
    from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader
    from llava_ablate.train.loop import LoopOptions, TrainState, _next_batch

    long_answer = " ".join(["alpha beta gamma"] * 60)
    rows = [
        {"id": f"r{i}", "conversations": _turns("Q?", long_answer if i in (2, 5) else "A.")}
        for i in range(8)
    ]
    (tmp_path / "long.json").write_text(json.dumps(rows))
    (tmp_path / "short.json").write_text(json.dumps([{"id": "s", "conversations": QA}] * 8))
    sources = [
        SourceCfg(name=n, path=str(tmp_path / f"{n}.json"), image_root=str(tmp_path))
        for n in ("long", "short")
    ]
    for src in sources:
        build_source(src, tmp_path / "s", samples_per_shard=8, workers=1)

    def length(conversation) -> int:
        t = tokenize_conversation(
            "x", conversation, tiny_variant.tokenizer, num_image_tokens=1, max_length=10**6
        )
        return len(t.input_ids)

    max_length = length(rows[0]["conversations"]) + 8  # the short answers fit whole
    full = length(rows[2]["conversations"])
    assert full > max_length
    encoder = SampleEncoder(
        tiny_variant.processor,
        EncodeOptions("chat", tiny_variant.num_image_tokens, max_length, "truncate", True),
    )
    stream = ShardStream(
        StreamPlan(open_mixture(data_cfg("mix", sources, tmp_path / "s"), 0), 0, 4),
        encoder,
        Collator(tiny_variant.tokenizer.pad_token_id),
        BatchingOptions(2, "none", 1),
        rank=0,
        world=1,
        workers=0,
    )
    state, window = TrainState(), Counter()
    opts = LoopOptions(
        total_steps=1, log_every=1, save_every=0, keep_checkpoints=1, nan_skip_limit=0,
        max_bad_fraction=0.5, checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    batches = iter(StreamingLoader(stream, 0))
    for _ in range(stream.batches_per_epoch()):
        _next_batch(batches, state, opts, window, None)
    assert dict(state.truncated) == {"long": 2}
    assert dict(state.truncated_tokens) == {"long": 2 * (full - max_length)}
    assert sum(state.skipped.values()) == 0  # trained on (cut), not skipped
