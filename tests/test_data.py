"""LLaVA JSON reading, sampling strategies, and bad data: skipped and counted, never silent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_ablate.config import SourceCfg
from llava_ablate.data.dataset import Collator, LlavaDataset, Skip, TokenizeOptions
from llava_ablate.data.images import pad_to_square
from llava_ablate.data.llava_json import DataSourceError, apply_sampling, load_sources


def _write(path: Path, rows, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return path


def _convo(q="<image>\nWhat is it?", a="A cat."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.mark.parametrize(
    "strategy,expected",
    [("all", list(range(10))), ("first:30%", [0, 1, 2]), ("end:20%", [8, 9]), ("first:5%", [0])],
)
def test_sampling_strategies(strategy, expected):
    assert apply_sampling(list(range(10)), strategy, seed=0) == expected


def test_random_sampling_is_seeded():
    a = apply_sampling(list(range(100)), "random:10", seed=1)
    assert a == apply_sampling(list(range(100)), "random:10", seed=1) and len(set(a)) == 10
    assert a != apply_sampling(list(range(100)), "random:10", seed=2)


def test_reads_json_and_jsonl_and_counts_malformed(tmp_path):
    a = _write(
        tmp_path / "a.json",
        [
            {"id": "x", "image": "i.png", "conversations": _convo()},
            {"id": "t", "conversations": _convo("Hi?", "Hello.")},
            {"id": "bad"},
        ],
    )
    b = _write(tmp_path / "b.jsonl", [{"id": "y", "conversations": _convo("Q?", "A.")}], jsonl=True)
    recs, bad = load_sources(
        [SourceCfg(path=str(a), image_root=str(tmp_path)), SourceCfg(path=str(b))], seed=0
    )
    assert [r.id for r in recs] == ["x", "t", "y"]
    assert recs[0].images == [tmp_path / "i.png"] and recs[1].images == []
    assert bad == {"malformed_record": 1}


def test_missing_unreleased_and_invalid_sources_fail_clearly(tmp_path):
    with pytest.raises(DataSourceError, match="nope.json"):
        load_sources([SourceCfg(path=str(tmp_path / "nope.json"))], seed=0)
    with pytest.raises(DataSourceError, match="never released.*secret.json"):
        load_sources([SourceCfg(path="secret.json", released=False)], seed=0)
    (tmp_path / "c.jsonl").write_text('{"id": 1, "conversations": []}\n{oops\n')
    with pytest.raises(DataSourceError, match=r"c\.jsonl:2"):
        load_sources([SourceCfg(path=str(tmp_path / "c.jsonl"))], seed=0)
    _write(tmp_path / "d.json", [])
    with pytest.raises(DataSourceError, match="first:N%"):
        load_sources([SourceCfg(path=str(tmp_path / "d.json"), sampling="half")], seed=0)


def test_pad_to_square_centres_on_the_fill_colour():
    im = Image.new("RGB", (4, 2), (255, 0, 0))
    sq = pad_to_square(im, (1, 2, 3))
    assert (
        sq.size == (4, 4)
        and sq.getpixel((0, 0)) == (1, 2, 3)
        and sq.getpixel((0, 1)) == (255, 0, 0)
    )


def test_bad_samples_are_skipped_with_their_reason(tmp_path, tiny_variant):
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [
        {"id": "good", "image": "ok.png", "conversations": _convo()},
        {"id": "text", "conversations": _convo("Hi?", "Hello.")},
        {"id": "corrupt", "image": "corrupt.png", "conversations": _convo()},
        {"id": "missing", "image": "gone.png", "conversations": _convo()},
        {"id": "no_tag", "image": "ok.png", "conversations": _convo("What is it?")},
        {"id": "empty", "conversations": [{"from": "human", "value": "Hi"}]},
        {"id": "weird_role", "conversations": [{"from": "robot", "value": "x"}] + _convo("a", "b")},
        {"id": "long", "conversations": _convo("word " * 400, "ok")},
    ]
    src = _write(tmp_path / "d.json", rows)
    recs, _ = load_sources([SourceCfg(path=str(src), image_root=str(tmp_path))], seed=0)
    opts = TokenizeOptions(
        prompt_format="chat",
        num_image_tokens=tiny_variant.num_image_tokens,
        max_length=128,
        overflow="skip",
        pad_to_square=True,
    )
    ds = LlavaDataset(recs, tiny_variant.processor, opts)
    items = [ds[i] for i in range(len(ds))]
    reasons = {x.id: x.reason for x in items if isinstance(x, Skip)}
    assert reasons == {
        "corrupt": "corrupt_image",
        "missing": "missing_image",
        "no_tag": "image_tag_mismatch",
        "empty": "empty_supervision",
        "weird_role": "malformed_conversation",
        "long": "too_long",
    }
    good = items[0]
    image_id = tiny_variant.model.config.image_token_index
    assert int((good["input_ids"] == image_id).sum()) == tiny_variant.num_image_tokens
    assert good["pixel_values"].shape == (1, 3, 32, 32)

    batch = Collator(tiny_variant.tokenizer.pad_token_id)(items)
    assert batch["ids"] == ["good", "text"] and sum(batch["skipped"].values()) == 6
    assert batch["pixel_values"].shape[0] == 1  # only the image sample contributes pixels
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    n_text = len(items[1]["input_ids"])
    assert batch["attention_mask"][1].sum() == n_text
    assert (batch["labels"][1, n_text:] == -100).all()
    # A real forward pass accepts the batch: image features match the placeholder tokens.
    out = tiny_variant.model(
        **{k: batch[k] for k in ("input_ids", "labels", "attention_mask", "pixel_values")}
    )
    assert torch.isfinite(out.loss)
