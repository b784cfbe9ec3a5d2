"""The streaming loader: disjoint and complete across ranks x workers, mixture weights,
length grouping, determinism, and exact resume."""

from __future__ import annotations

import itertools
import math

import pytest

from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.data.mixture import BadShard, open_mixture
from llava_ablate.data.shards import build_mixture
from llava_ablate.data.stream import BatchingOptions, ShardStream, StreamingLoader, StreamPlan

from datagen import data_cfg, write_llava_source


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    a = write_llava_source(root, "a", 103)
    b = write_llava_source(root, "b", 30)
    build_mixture(data_cfg("ab", [a, b], root / "shards", samples_per_shard=10), workers=1)
    return root, a, b


def _loader(
    root,
    sources,
    variant,
    *,
    rank=0,
    world=1,
    workers=0,
    micro=3,
    seed=0,
    group=True,
    max_length=256,
    on_bad_shard="error",
):
    mixture = open_mixture(data_cfg("m", sources, root / "shards", on_bad_shard=on_bad_shard), seed)
    encoder = SampleEncoder(
        variant.processor, EncodeOptions("chat", variant.num_image_tokens, max_length, "skip", True)
    )
    stream = ShardStream(
        StreamPlan(mixture, seed, shuffle_buffer=16),
        encoder,
        Collator(variant.tokenizer.pad_token_id),
        BatchingOptions(micro, "group" if group else "none", 4),
        rank=rank,
        world=world,
        workers=workers,
    )
    return StreamingLoader(stream, workers)


def _ids(batches):
    return [batch["ids"] + [s.id for s in batch["skip_details"]] for batch in batches]


def test_ranks_and_workers_see_disjoint_complete_data(built, tiny_variant):
    root, a, b = built
    seen = []
    for rank in range(2):
        loader = _loader(root, [a, b], tiny_variant, rank=rank, world=2, workers=2)
        n = loader.stream.batches_per_epoch()
        assert n == 2 * ((133 // 4) // 3)  # 2 workers x floor(33 per slot / 3) batches
        seen += [i for batch in _ids(itertools.islice(loader, n)) for i in batch]
    assert len(seen) == len(set(seen)) == 2 * 2 * 11 * 3  # disjoint, equal shares
    assert len(set(seen)) >= 133 - 4 - 4 * 2  # only the tails are left out


def test_resume_continues_with_exactly_the_remaining_batches(built, tiny_variant):
    root, a, b = built
    reference = _ids(itertools.islice(_loader(root, [a, b], tiny_variant, workers=2), 100))
    per_epoch = _loader(root, [a, b], tiny_variant, workers=2).stream.batches_per_epoch()
    for k in (0, 3, 5, per_epoch, per_epoch + 3):
        first = _loader(root, [a, b], tiny_variant, workers=2)
        head = _ids(itertools.islice(first, k))
        state = first.state_dict()
        resumed = _loader(root, [a, b], tiny_variant, workers=2)
        resumed.load_state_dict(state)
        tail = _ids(itertools.islice(resumed, 100 - k))
        assert head + tail == reference, f"resume after {k} batches"


def test_workers_live_across_epochs_and_read_ahead(built, tiny_variant):
    """One DataLoader for the run: no worker start-up (and empty queue) at epoch boundaries."""
    root, a, b = built
    loader = _loader(root, [a, b], tiny_variant, workers=2)
    per_epoch = loader.stream.batches_per_epoch()
    it = iter(loader)
    next(it)
    workers = loader._live._workers
    pids = [w.pid for w in workers]
    assert loader._live._prefetch_factor == 4  # batches each worker keeps ready
    for _ in range(per_epoch + 2):
        next(it)
    assert (loader.stream.epoch, loader.stream.consumed) == (1, 3)
    assert [w.pid for w in loader._live._workers] == pids and all(w.is_alive() for w in workers)
    loader.close()


def test_resume_refuses_another_world(built, tiny_variant):
    root, a, b = built
    state = _loader(root, [a, b], tiny_variant, world=1).state_dict()
    with pytest.raises(ValueError, match="same data, seed, world size and workers"):
        _loader(root, [a, b], tiny_variant, world=2).load_state_dict(state)


def test_order_is_seeded(built, tiny_variant):
    root, a, b = built

    def first(seed):
        return _ids(itertools.islice(_loader(root, [a, b], tiny_variant, seed=seed), 10))

    assert first(1) == first(1) and first(1) != first(2)
    epochs = _ids(itertools.islice(_loader(root, [a, b], tiny_variant), 88))
    assert epochs[:44] != epochs[44:]  # each epoch is reshuffled


def test_mixture_weights_are_respected(built, tiny_variant):
    root, a, b = built
    a3 = a.__class__(**{**a.__dict__, "weight": 3.0})
    b1 = b.__class__(**{**b.__dict__, "weight": 1.0})
    loader = _loader(root, [a3, b1], tiny_variant, micro=1, group=False)
    ids = [
        i
        for batch in _ids(itertools.islice(loader, 4 * loader.stream.batches_per_epoch()))
        for i in batch
    ]
    n, from_b = len(ids), sum(i.startswith("b-") for i in ids)
    sigma = math.sqrt(n * 0.25 * 0.75)
    assert abs(from_b - n * 0.25) < 4 * sigma, (from_b, n)  # b is up-sampled 30 -> ~33/epoch


def test_sampling_strategy_applies_at_read_time(built, tiny_variant):
    root, a, b = built
    half = a.__class__(**{**a.__dict__, "sampling": "first:50%"})
    loader = _loader(root, [half], tiny_variant, micro=1, group=False)
    ids = {
        i
        for batch in _ids(itertools.islice(loader, loader.stream.batches_per_epoch()))
        for i in batch
    }
    assert ids == {f"a-{i}" for i in range(52)}


def test_length_grouping_wastes_less_padding(built, tiny_variant):
    root, a, b = built

    def waste(group):
        loader = _loader(root, [a, b], tiny_variant, micro=4, group=group)
        batches = list(itertools.islice(loader, loader.stream.batches_per_epoch()))
        pad = sum(int((bt["attention_mask"] == 0).sum()) for bt in batches)
        return pad / sum(bt["attention_mask"].numel() for bt in batches)

    assert waste(True) < 0.7 * waste(False)


def test_over_long_samples_are_counted(built, tiny_variant):
    root, a, b = built
    loader = _loader(root, [a, b], tiny_variant, max_length=24)
    skipped = sum(
        bt["skipped"].get("too_long", 0)
        for bt in itertools.islice(loader, loader.stream.batches_per_epoch())
    )
    assert skipped > 0


def test_a_short_shard_under_skip_keeps_every_batch_and_counts_its_samples(tmp_path, tiny_variant):
    import tarfile

    src = write_llava_source(tmp_path, "c", 40)
    build_mixture(data_cfg("c", [src], tmp_path / "shards", samples_per_shard=10), workers=1)
    kw = {"workers": 2, "micro": 1, "group": False}  # every sample in a batch: all are counted
    per_epoch = _loader(tmp_path, [src], tiny_variant, **kw).stream.batches_per_epoch()
    tar = tmp_path / "shards/c/c-000002.tar"
    with tarfile.open(tar) as tf:
        cut = [m for m in tf.getmembers() if m.name.startswith("000000027.")][0].offset
    tar.write_bytes(tar.read_bytes()[:cut])  # a partial copy: samples 27..29 are gone
    loader = _loader(tmp_path, [src], tiny_variant, on_bad_shard="skip", **kw)
    assert loader.stream.batches_per_epoch() == per_epoch
    batches = list(itertools.islice(loader, per_epoch))
    # Its 7 intact samples too: a shard that fails its checks gives nothing (which bytes are
    # wrong is unknown), so the whole shard's 10 are counted.
    assert sum(bt["skipped"].get("bad_shard", 0) for bt in batches) == 10
    assert loader.stream.epoch == 0  # the epoch did not end early
    with pytest.raises(BadShard, match=r"c-000002\.tar.*rebuild"):
        next(iter(_loader(tmp_path, [src], tiny_variant, **kw)))


def test_text_only_batches_get_a_loss_neutral_image_row(tiny_variant):
    """Under ZeRO-3 every rank must run the vision tower; the placeholder row must not change
    the loss."""
    import torch

    from llava_ablate.data.conversation import tokenize_conversation

    encoder = SampleEncoder(
        tiny_variant.processor,
        EncodeOptions("chat", tiny_variant.num_image_tokens, 256, "skip", True),
    )
    items = []
    for i in range(2):
        convo = [
            {"from": "human", "value": f"Count to {i + 2}?"},
            {"from": "gpt", "value": " ".join(str(k) for k in range(i + 2))},
        ]
        t = tokenize_conversation(
            str(i),
            convo,
            tiny_variant.tokenizer,
            num_image_tokens=tiny_variant.num_image_tokens,
            max_length=256,
        )
        items.append(
            {"id": str(i), "input_ids": torch.tensor(t.input_ids), "labels": torch.tensor(t.labels)}
        )
    plain = Collator(tiny_variant.tokenizer.pad_token_id)(items)
    placeholder = encoder.image_placeholder(tiny_variant.model.config.image_token_index)
    padded = Collator(tiny_variant.tokenizer.pad_token_id, placeholder)(items)
    assert "pixel_values" not in plain and padded["pixel_values"].shape[0] == 1
    assert padded["input_ids"].shape[0] == 3 and padded["placeholder_rows"] == 1
    assert padded["ids"] == ["0", "1"]
    keys = ("input_ids", "labels", "attention_mask", "pixel_values")
    with torch.no_grad():
        a = tiny_variant.model(**{k: plain[k] for k in keys if k in plain}).loss
        b = tiny_variant.model(**{k: padded[k] for k in keys if k in padded}).loss
    assert torch.allclose(a, b, atol=1e-6)


def test_auto_workers_share_the_node_cpus_between_local_ranks(monkeypatch):
    from llava_ablate.data.stream import resolve_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    for local_ranks, expected in [("4", 3), ("1", 8), ("16", 1)]:  # one CPU left per trainer
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
        assert resolve_workers("auto") == expected
    assert resolve_workers(3) == 3
