"""The FLOP count behind MFU and HFU (llava_ablate/model/flops.py), vision tower included:
against a hand count for one tiny config, and against torch's own FlopCounterMode over a real
forward + backward of tiny variants (fp32, CPU), stage 1 and stage 2, padded and packed rows,
within 5%."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava_ablate.config import LearningRates, compose_config, to_object
from llava_ablate.model.build import build_variant
from llava_ablate.model.flops import FlopModel, batch_shape, flop_model, step_flops
from llava_ablate.model.freeze import apply_training_plan
from llava_ablate.train.loss import supervised_loss

STAGES = {
    "align": LearningRates(projector=1e-3),
    "finetune": LearningRates(projector=1e-3, llm=1e-5),
}


def test_hand_count_of_one_tiny_config():
    """One CLIP view of 4 patches (+CLS), one 1-layer LLM, one 10-token sequence, 3 supervised
    tokens, stage 1 (projector only), counted by hand."""
    fm = FlopModel(vision_layers=1, vision_hidden=8, vision_ffn=16, vision_tokens=5, patch_dim=12,
                   patches=4, projector_in=8, projector_tokens=4, llm_layers=1, llm_hidden=16,
                   llm_q=16, llm_kv=8, llm_ffn=32, llm_mlp_mats=3, vocab=100,
                   trained=(False, True, False))  # fmt: skip
    # Tower (frozen, nothing before it trains: forward only).
    embed = 2 * 4 * 12 * 8  # 4 patches x (12 -> 8)
    tower = 2 * 5 * 8 * 8 * 4 + 4 * 5 * 5 * 8 + 2 * 5 * 8 * 16 * 2  # QKVO, scores, MLP
    # Projector (trained: forward + 2x backward).
    proj = 3 * 2 * 4 * (8 * 16 + 16 * 16)
    # LLM (frozen, crossed by gradients: weights 1x, attention 2x in the backward).
    weights = 2 * 10 * 16 * (2 * 16 + 2 * 8) + 2 * 10 * 16 * 32 * 3
    attention = 4 * 10 * 10 * 16
    head = 2 * 3 * 16 * 100
    llm = 2 * (weights + head) + 3 * attention
    assert fm.step(views=1, tokens=10, attention=100, supervised=3) == embed + tower + proj + llm


def _batch(tokenizer, config, packed: bool) -> dict:
    """Two rows: an image + question + answer, and a shorter one (right-padded, or packed with a
    second text-only sample that restarts its positions)."""
    n = config.image_seq_length
    img, pad = config.image_token_id, tokenizer.pad_token_id
    a = [1, *[img] * n, *range(10, 22), *range(30, 36)]  # 6 answer tokens
    b = [1, *[img] * n, *range(40, 46), *range(50, 53)]
    width = len(a)
    labels = [[-100] * (len(x) - k) + x[-k:] for x, k in ((a, 6), (b, 3))]
    if packed:  # b then a 4-token text sample in the same row, positions restarting
        extra = [1, 60, 61, 62]
        b, labels[1] = b + extra, labels[1] + [-100, -100, 61, 62]
        positions = [list(range(len(a))), list(range(len(b) - 4)) + list(range(4))]
    rows = [x + [pad] * (width - len(x)) for x in (a, b)]
    labels = [x + [-100] * (width - len(x)) for x in labels]
    mask = [[1] * len(x) + [0] * (width - len(x)) for x in (a, b)]
    batch = {"input_ids": torch.tensor(rows), "labels": torch.tensor(labels),
             "attention_mask": torch.tensor(mask),
             "pixel_values": torch.randn(2, 3, config.vision_config.image_size,
                                         config.vision_config.image_size)}  # fmt: skip
    if packed:
        batch["position_ids"] = torch.tensor([p + [0] * (width - len(p)) for p in positions])
    return batch


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("vision, packed", [("tiny_clip", False), ("tiny_siglip", True)])
def test_step_flops_match_torch_flop_counter(cache_dir, stage, vision, packed):
    cfg = to_object(compose_config([f"vision={vision}", "llm=tiny_qwen2"]))
    variant = build_variant(cfg.vision, cfg.llm, cfg.projector, arch=cfg.arch,
                            cache_dir=cache_dir, attn_implementation="eager")  # fmt: skip
    model = variant.model.train()
    _, counts = apply_training_plan(model, STAGES[stage], weight_decay=0.0, lora=False,
                                    vision_feature_layer=cfg.vision.feature_layer)  # fmt: skip
    trained = {m: c.trainable > 0 for m, c in counts.items()}
    batch = _batch(variant.processor.tokenizer, model.config, packed)
    with FlopCounterMode(display=False) as counter:
        loss = supervised_loss(model, batch, torch.tensor(1.0))
        loss.backward()
    fm = flop_model(model, trained, attn_implementation="eager")
    shape = batch_shape(batch, fm)
    ours_model, ours_hardware = step_flops(fm, shape)
    # Eager attention computes every row over its full width: what HFU counts.
    assert ours_hardware == pytest.approx(counter.get_total_flops(), rel=0.05)
    assert ours_model < ours_hardware  # the padding is no useful work
    assert shape.supervised == 9 + (2 if packed else 0)


def test_recompute_adds_one_forward_of_the_checkpointed_layers_to_hardware_flops_only():
    from dataclasses import replace

    from llava_ablate.model.flops import BatchShape

    fm = FlopModel(vision_layers=2, vision_hidden=8, vision_ffn=16, vision_tokens=5, patch_dim=12,
                   patches=4, projector_in=8, projector_tokens=4, llm_layers=2, llm_hidden=16,
                   llm_q=16, llm_kv=16, llm_ffn=32, llm_mlp_mats=3, vocab=100,
                   trained=(False, True, True))  # fmt: skip
    shape = BatchShape(views=1, views_computed=1, tokens=10, tokens_computed=10, attention=100,
                       attention_padded=100, supervised=3)  # fmt: skip
    plain_model, plain_hw = step_flops(fm, shape)
    model, hardware = step_flops(replace(fm, recompute=True), shape)
    assert model == plain_model == plain_hw  # no padding, no recompute: MFU's FLOPs = HFU's
    llm = fm.llm(10, 100)  # the frozen tower has no backward: nothing of it is recomputed
    assert hardware - plain_hw == llm.weights + llm.attention
