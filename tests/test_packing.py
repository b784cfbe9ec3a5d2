"""Multimodal sequence packing (`data.batching=pack`): the packer's invariants, and that a packed
micro-batch trains exactly like the same samples one per row (per-token loss and gradients),
for the vicuna_v1 and ChatML templates, text-only and image samples mixed, plain and under
DeepSpeed ZeRO-2/3."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_ablate.data.batching import BatchingOptions, micro_batches, pack_window
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder, Skip, Tokenized

from conftest import build_tiny, read_metrics
from datagen import image_bytes

KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values")


# --- the packer ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=60),
    skips=st.lists(st.booleans(), max_size=60),
    micro=st.integers(1, 6),
    max_length=st.integers(64, 200),
)
def test_every_sample_lands_once_in_a_row_that_fits(lengths, skips, micro, max_length):
    items = [
        Skip(str(i), "bad")
        if i < len(skips) and skips[i]
        else Tokenized(str(i), [0] * n, [0] * n, [])
        for i, n in enumerate(lengths)
    ]
    n_batches = max(1, len(items) // micro)
    batches = pack_window(items, n_batches, max_length)
    assert len(batches) == n_batches
    placed = [x.id for b in batches for row in b for x in row]
    assert sorted(placed) == sorted(x.id for x in items)  # each sample (and skip) exactly once
    for b in batches:
        for row in b:
            assert sum(x.length for x in row if isinstance(x, Tokenized)) <= max_length
    real = sum(1 for x in items if isinstance(x, Tokenized))
    if real >= n_batches:  # enough samples: no micro-batch is left with nothing to train on
        assert all(any(isinstance(x, Tokenized) for row in b for x in row) for b in batches)
    assert pack_window(items, n_batches, max_length) == batches  # deterministic


def test_pack_keeps_the_number_of_micro_batches_and_fills_rows():
    rng = random.Random(0)
    items = [Tokenized(str(i), [0] * rng.randint(20, 120), [], []) for i in range(203)]
    opts = {m: BatchingOptions(4, m, 8, max_length=256) for m in ("none", "group", "pack")}
    cut = {m: list(micro_batches(iter(items), o, random.Random(1))) for m, o in opts.items()}
    assert {m: len(b) for m, b in cut.items()} == {"none": 50, "group": 50, "pack": 50}
    packed_ids = sorted(x.id for b in cut["pack"] for row in b for x in row)
    assert packed_ids == sorted(x.id for b in cut["group"] for row in b for x in row)

    def waste(batches):
        padded = sum(len(b) * max(sum(x.length for x in r) for r in b) for b in batches)
        return 1 - sum(x.length for b in batches for r in b for x in r) / padded

    assert waste(cut["pack"]) < 0.05 < waste(cut["group"])


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match=r"data.batching='packed'; choose one of"):
        BatchingOptions(4, "packed")


def test_packed_rows_restart_positions_and_mask_each_samples_first_label():
    def sample(i, n):
        return {"id": str(i), "input_ids": torch.arange(1, n + 1), "labels": torch.arange(1, n + 1)}

    batch = Collator(0, packed=True).rows([[sample(0, 3), sample(1, 2)], [sample(2, 4)]])
    assert "attention_mask" not in batch and batch["real_tokens"] == 9
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 2], [-100, 2, 3, 4, -100]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 1, 2], [1, 2, 3, 4, 0]]
    plain = Collator(0)([sample(0, 3), sample(2, 4)])
    assert "position_ids" not in plain and plain["labels"][0].tolist() == [1, 2, 3, -100]


# --- packed == unpacked -------------------------------------------------------------------

QUESTIONS = ["Say alpha?", "What is drawn here, in a few words?", "Name it.", "Count: one two?"]


def _samples(with_images: list[bool]) -> list[dict]:
    out = []
    for i, img in enumerate(with_images):
        q = QUESTIONS[i % len(QUESTIONS)]
        meta = {
            "id": f"s{i}",
            "conversations": [
                {"from": "human", "value": ("<image>\n" if img else "") + q},
                {"from": "gpt", "value": "answer " + "word " * (1 + 3 * i % 7)},
                {"from": "human", "value": "And then?"},
                {"from": "gpt", "value": f"more {i}."},
            ],
            "images": ["img0.png"] if img else [],
        }
        sample = {"__key__": f"{i:09d}", "json": meta}
        if img:
            sample["img0.png"] = image_bytes(i)
        out.append(sample)
    return out


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen2"])  # vicuna_v1 | ChatML
def variant(request, cache_dir):
    return build_tiny(cache_dir, llm=request.param)


def _batches(variant, with_images: list[bool], max_length: int, placeholder: bool = False):
    """The same samples as one micro-batch two ways: one per row, and packed."""
    encoder = SampleEncoder(
        variant.processor, EncodeOptions("chat", variant.num_image_tokens, 256, "skip", True)
    )
    toks = [encoder.tokenize(s) for s in _samples(with_images)]
    assert all(isinstance(t, Tokenized) for t in toks)
    rows = pack_window(toks, 1, max_length)[0]
    assert max(len(r) for r in rows) > 1, "the test needs rows holding several samples"
    finished = {t.id: encoder.finish(t) for t in toks}
    ph = encoder.image_placeholder(variant.model.config.image_token_index) if placeholder else None
    pad = variant.tokenizer.pad_token_id
    plain = Collator(pad, ph)([finished[t.id] for t in toks])
    packed = Collator(pad, ph, packed=True).rows([[finished[x.id] for x in r] for r in rows])
    return toks, plain, packed


def _per_token_losses(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's loss and each sample's per-token losses (on its supervised targets)."""
    out = model(**{k: batch[k] for k in KEYS if k in batch}, use_cache=False)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    per = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none"
    )
    pos = batch.get("position_ids")
    losses: dict[str, torch.Tensor] = {}
    ids = iter(batch["ids"])
    for i in range(labels.shape[0] - batch.get("placeholder_rows", 0)):
        starts = [0] if pos is None else (pos[i] == 0).nonzero().flatten().tolist()
        n_real = int(batch["attention_mask"][i].sum()) if pos is None else None
        for k, s in enumerate(starts):
            e = starts[k + 1] if k + 1 < len(starts) else (n_real or labels.shape[1] + 1)
            if pos is not None and bool((batch["labels"][i, s:] == -100).all()):
                break  # the padded tail
            keep = labels[i, s : e - 1] != -100
            losses[next(ids)] = per[i, s : e - 1][keep]
    return out.loss, losses


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "with_images,placeholder",
    [
        ([True, False, True, True, False, True, False], False),  # mixed
        ([False, False, False, False], True),  # text-only: the ZeRO-3 placeholder row
    ],
    ids=["mixed", "text_only"],
)
def test_packed_loss_and_gradients_equal_unpacked(variant, with_images, placeholder):
    toks, plain, packed = _batches(variant, with_images, max_length=256, placeholder=placeholder)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # really packed
    assert "attention_mask" not in packed  # so transformers detects the packing
    results = []
    for batch in (plain, packed):
        model = copy.deepcopy(variant.model).train()
        loss, per_token = _per_token_losses(model, batch)
        loss.backward()
        results.append((loss, per_token, _grads(model)))
    (loss_a, tok_a, grad_a), (loss_b, tok_b, grad_b) = results
    assert sorted(tok_a) == sorted(tok_b) == sorted(t.id for t in toks)
    for sid in tok_a:
        assert tok_a[sid].numel() > 0
        torch.testing.assert_close(tok_b[sid], tok_a[sid], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-5)
    assert grad_a.keys() == grad_b.keys() and grad_a
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], atol=1e-6, rtol=1e-4, msg=name)


def test_without_position_resets_samples_would_see_each_other(variant):
    """The equality above is not vacuous: the same packed rows with plain positions (one
    sequence per row) give different per-token losses."""
    _, _, packed = _batches(variant, [True, False, True, True, False, True], 256)
    leaky = dict(
        packed,
        position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]),
    )
    with torch.no_grad():
        leaky_loss = variant.model(**{k: leaky[k] for k in KEYS if k in leaky}, use_cache=False)
        right = variant.model(**{k: packed[k] for k in KEYS if k in packed}, use_cache=False)
    assert not torch.allclose(leaky_loss.loss, right.loss, atol=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize(
    "with_images",
    [[True, False, True, True, False, True], [False, False, False, False]],  # text-only:
    ids=["mixed", "text_only"],  # the placeholder image row that keeps ZeRO-3 ranks in step
)
def test_packed_gradients_equal_unpacked_under_deepspeed(
    cache_dir, world_of_one, stage, with_images
):
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from llava_ablate.base.distributed import init_distributed

    init_distributed()
    variant = build_tiny(cache_dir, llm="tiny_qwen2")
    _, plain, packed = _batches(variant, with_images, 256, placeholder=True)
    assert ("placeholder_rows" in packed) == (not any(with_images))
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_force_ds_cpu_optimizer": False,
    }
    grads = []
    for batch in (plain, packed):
        model = copy.deepcopy(variant.model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        loss = engine(**{k: batch[k] for k in KEYS if k in batch}, use_cache=False).loss
        engine.backward(loss)
        grads.append(
            {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}
        )
        engine.destroy()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)


def test_a_step_is_the_mean_over_the_global_batchs_supervised_tokens(
    cache_dir, tmp_path, world_of_one
):
    """Micro-batches of very different token counts (a short one-per-row batch and a long
    packed one) accumulate to the gradient of one forward over all their samples: the loss is a
    mean over the step's supervised tokens, not a mean of micro-batch means."""
    import deepspeed

    from llava_ablate.base.distributed import init_distributed
    from llava_ablate.train.loop import LoopOptions, TrainState, train_loop
    from llava_ablate.train.metrics import MetricsLogger

    init_distributed()
    variant = build_tiny(cache_dir, llm="tiny_qwen2")
    with_images = [True, False, True, True, False, True, False]
    toks, whole, _ = _batches(variant, with_images, 256)
    encoder = SampleEncoder(
        variant.processor, EncodeOptions("chat", variant.num_image_tokens, 256, "skip", True)
    )
    finished = [encoder.finish(t) for t in toks]
    pad = variant.tokenizer.pad_token_id
    short = Collator(pad)(finished[:1])
    rows = pack_window(toks[1:], 1, 256)[0]
    by_id = {x["id"]: x for x in finished}
    long = Collator(pad, packed=True).rows([[by_id[x.id] for x in r] for r in rows])

    reference = copy.deepcopy(variant.model).train()
    reference(**{k: whole[k] for k in KEYS if k in whole}, use_cache=False).loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.5).step()

    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 by default
    }
    model = copy.deepcopy(variant.model).train()
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), config=config
    )
    opts = LoopOptions(
        total_steps=1,
        log_every=1,
        save_every=0,
        keep_checkpoints=1,
        nan_skip_limit=0,
        max_bad_fraction=0.01,
        checkpoint_dir=tmp_path / "ckpt",
    )
    metrics = MetricsLogger(tmp_path, enabled=True)
    train_loop(engine, iter([short, long]), TrainState(), opts, metrics, lambda s: {})
    trained = dict(engine.module.named_parameters())
    for name, q in reference.named_parameters():
        torch.testing.assert_close(trained[name], q, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():
        ref_loss = variant.model(**{k: whole[k] for k in KEYS if k in whole}, use_cache=False)
    assert read_metrics(tmp_path)[0]["loss"] == pytest.approx(ref_loss.loss.item(), rel=1e-5)
