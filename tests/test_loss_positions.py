"""Logits only where the loss is (llava_ablate/train/loss.py): at Qwen2's 152,064-token
vocabulary, the loss computed from the supervised positions' logits (chunked, recomputed in the
backward) gives the same per-token losses, loss and gradients as transformers' full-logits path
(`labels=...`, what the loop ran before), for one-per-row, grouped and packed micro-batches, the
llava and OneVision architectures, tied embeddings, plain and under DeepSpeed ZeRO-2/3."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from llava_ablate.data.batching import BatchingOptions, micro_batches
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder, Tokenized
from llava_ablate.train.loss import supervised_loss, supervised_positions

from conftest import build_tiny
from datagen import image_bytes

VOCAB = 152_064  # Qwen2's
KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_sizes",
        "batch_num_images")  # fmt: skip
ARCHS = {
    "llava": ("tiny_clip", ()),
    "onevision": ("tiny_siglip", ("arch=tiny_onevision",)),
    "llava_tied": ("tiny_clip", ("llm.config.tie_word_embeddings=true",)),
}
CHUNK = 7  # a few supervised tokens per chunk, so every batch spans several chunks


@pytest.fixture(scope="module", params=list(ARCHS))
def big_vocab(request, cache_dir):
    vision, overrides = ARCHS[request.param]
    variant = build_tiny(cache_dir, vision, "tiny_qwen2", overrides=overrides)
    # The tiny tokenizer's ids stay below 512; the softmax runs over all 152,064 entries.
    variant.model.resize_token_embeddings(VOCAB, mean_resizing=False)
    tied = variant.model.lm_head.weight is variant.model.get_input_embeddings().weight
    assert tied == (request.param == "llava_tied")
    return variant


def _samples(n: int) -> list[dict]:
    out = []
    for i in range(n):
        img = i % 3 != 1  # image and text-only samples mixed
        meta = {
            "id": f"s{i}",
            "conversations": [
                {"from": "human", "value": ("<image>\n" if img else "") + "What is it? " * (i % 3)},
                {"from": "gpt", "value": "a thing " + "word " * (1 + 3 * i % 7)},
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


def _batch(variant, mode: str) -> dict:
    """The first micro-batch the loader's batching mode (data.batching) cuts from 8 samples."""
    anyres = hasattr(variant.model.config, "image_grid_pinpoints")  # OneVision
    options = EncodeOptions(
        "chat", variant.num_image_tokens, 512, "skip", not anyres, anyres=anyres
    )
    encoder = SampleEncoder(variant.processor, options)
    toks = [encoder.tokenize(s) for s in _samples(8)]
    assert all(isinstance(t, Tokenized) for t in toks)
    opts = BatchingOptions(4, mode, group_buffer=2, max_length=512)
    rows = next(micro_batches(iter(toks), opts, random.Random(0)))
    placeholder = encoder.image_placeholder(variant.model.config.image_token_index)
    collate = Collator(variant.tokenizer.pad_token_id, placeholder, packed=mode == "pack")
    batch = collate.rows([[encoder.finish(x) for x in row] for row in rows])
    assert (mode == "pack") == ("position_ids" in batch)
    return batch


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in (*KEYS, "labels") if k in batch}


def _full_path(model, batch: dict, num_items: torch.Tensor):
    """What the loop ran before: transformers' loss over the logits of every position, and the
    per-token losses of the supervised targets (row-major)."""
    out = model(**_inputs(batch), use_cache=False, num_items_in_batch=num_items)
    labels = batch["labels"][:, 1:]
    per = F.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), labels, reduction="none")
    return out.loss, per[labels != -100]


def _supervised_path(model, batch: dict, num_items: torch.Tensor, shift: int = 0):
    keep, targets = supervised_positions(batch["labels"])
    keep = keep.roll(shift, dims=1)  # the control: the head one position off
    with torch.no_grad():  # the per-token losses, from the positions the loss keeps
        inputs = {k: batch[k] for k in KEYS if k in batch}
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    assert logits.shape == (int(keep.sum()), VOCAB)
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    return supervised_loss(model, _inputs(batch), num_items, chunk=CHUNK), per_token


def _grads(named) -> dict[str, torch.Tensor]:
    return {n: g.clone() for n, g in named if g is not None}


@pytest.mark.parametrize("mode", ["none", "group", "pack"])
def test_supervised_logits_equal_the_full_path(big_vocab, mode):
    batch = _batch(big_vocab, mode)
    num_items = torch.tensor(13.5)  # a share of a larger global batch, as the loop passes
    results = []
    for path in (_full_path, _supervised_path):
        model = copy.deepcopy(big_vocab.model).train()
        loss, per_token = path(model, batch, num_items)
        loss.backward()
        results.append((loss, per_token, _grads((n, p.grad) for n, p in model.named_parameters())))
    (loss_a, tok_a, grad_a), (loss_b, tok_b, grad_b) = results
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    assert tok_a.numel() == tok_b.numel() == n_targets > 2 * CHUNK
    torch.testing.assert_close(tok_b, tok_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    head = big_vocab.model.lm_head.weight  # tied: named as the input embedding
    assert grad_a.keys() == grad_b.keys()
    assert any(p is head for n, p in big_vocab.model.named_parameters() if n in grad_a)
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("big_vocab", ["llava"], indirect=True)
def test_the_head_one_position_off_differs(big_vocab):
    """The equality above can fail: the logits of the supervised positions' neighbours (the
    shift left out) give other token losses."""
    batch = _batch(big_vocab, "pack")
    model = copy.deepcopy(big_vocab.model)
    with torch.no_grad():
        _, right = _full_path(model, batch, torch.tensor(1.0))
        _, off = _supervised_path(model, batch, torch.tensor(1.0), shift=1)
    assert (off - right).abs().amax() > 1e-3


@pytest.mark.parametrize("big_vocab", ["llava"], indirect=True)
def test_a_micro_batch_with_nothing_supervised_gives_a_zero_loss(big_vocab):
    batch = _batch(big_vocab, "none")
    batch["labels"] = torch.full_like(batch["labels"], -100)
    model = copy.deepcopy(big_vocab.model).train()
    loss = supervised_loss(model, _inputs(batch), torch.tensor(4.0))
    loss.backward()
    assert loss.item() == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "big_vocab,mode,stage",
    [
        ("llava", "group", 2),
        ("llava", "pack", 3),
        pytest.param("llava", "pack", 2, marks=SLOW),
        pytest.param("llava", "group", 3, marks=SLOW),
        pytest.param("onevision", "pack", 3, marks=SLOW),
        pytest.param("onevision", "group", 2, marks=SLOW),
        pytest.param("llava_tied", "group", 3, marks=SLOW),
    ],
    indirect=["big_vocab"],
)
def test_supervised_logits_equal_the_full_path_under_deepspeed(
    big_vocab, world_of_one, stage, mode
):
    """ZeRO-3 partitions lm_head (and, tied, the embedding it shares): the head runs inside the
    model's forward, so DeepSpeed gathers it and starts its backward on the engine's output."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from llava_ablate.base.distributed import init_distributed

    init_distributed()
    batch = _batch(big_vocab, mode)
    num_items = torch.tensor(9.0)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_force_ds_cpu_optimizer": False,
    }
    results = []
    for path in (_full_path, _supervised_path):
        model = copy.deepcopy(big_vocab.model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        loss, per_token = path(engine, batch, num_items)
        engine.backward(loss)
        named = ((n, safe_get_full_grad(p)) for n, p in engine.module.named_parameters())
        results.append((loss.detach(), per_token, _grads(named)))
        engine.destroy()
    (loss_a, tok_a, grad_a), (loss_b, tok_b, grad_b) = results
    torch.testing.assert_close(tok_b, tok_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert grad_a.keys() == grad_b.keys() and grad_a
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], atol=1e-5, rtol=1e-5, msg=name)
