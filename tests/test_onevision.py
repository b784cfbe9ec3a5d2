"""The arch axis: LLaVA-OneVision (anyres) built as transformers' own classes, with image-token
counts that depend on each image's size flowing through encoding, batching, the ZeRO-3
placeholder row, the stage hand-over and the plan. Tiny shapes: a 32 px SigLIP tower, grids of
up to 3x3 crops, at most 4 crops' worth of features (arch=tiny_onevision), so both OneVision
paths run: plain unpadding and the downsampling beyond anyres_max_N."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from PIL import Image
from transformers import (
    LlavaForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
)

from llava_ablate.config import LearningRates, compose_config, to_object
from llava_ablate.data.anyres import anyres_token_counts, size_only_processor, tower_views
from llava_ablate.data.batching import pack_window
from llava_ablate.data.encode import Collator, EncodeOptions, SampleEncoder
from llava_ablate.launch.estimate import memory_per_rank, model_size
from llava_ablate.model.archs import anyres_pinpoints
from llava_ablate.model.freeze import apply_training_plan
from llava_ablate.model.init_from import load_parts

from conftest import build_tiny

OV = ("arch=tiny_onevision",)
# (width, height): square, wide, tall, a 3x3 grid beyond anyres_max_4, an odd aspect
SIZES = [(32, 32), (64, 32), (32, 64), (96, 40), (40, 96), (96, 96), (50, 40)]
MODEL_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", "image_sizes",
              "batch_num_images")  # fmt: skip


@pytest.fixture(scope="module")
def ov(cache_dir):
    return build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2", overrides=OV)


def _prompt(processor, images: int = 1, question: str = "What is it?") -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


def _png(size, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _sample(i: int, sizes: list[tuple[int, int]], answer: str = "A red box.") -> dict:
    tags = "".join("<image>\n" for _ in sizes)
    meta = {
        "id": f"s{i}",
        "conversations": [
            {"from": "human", "value": tags + "What is it?"},
            {"from": "gpt", "value": answer},
        ],
        "images": [f"img{k}.png" for k in range(len(sizes))],
    }
    return {"json": json.dumps(meta), **{f"img{k}.png": _png(s) for k, s in enumerate(sizes)}}


def test_onevision_builds_as_its_own_transformers_classes(ov):
    assert type(ov.model) is LlavaOnevisionForConditionalGeneration
    assert type(ov.processor) is LlavaOnevisionProcessor and ov.anyres
    config = ov.model.config
    assert config.image_grid_pinpoints == [[32 * i, 32 * j] for i in (1, 2, 3) for j in (1, 2, 3)]
    assert config.vision_aspect_ratio == "anyres_max_4"
    assert ov.processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert ov.processor.num_image_tokens == 16 == ov.num_image_tokens  # (32 / 8)^2, SigLIP
    # OneVision's image_newline is part of the connector: it trains with the projector.
    _, counts = apply_training_plan(
        ov.model, LearningRates(projector=1e-3), weight_decay=0.0, lora=False,
        vision_feature_layer=-1,
    )  # fmt: skip
    assert ov.model.model.image_newline.requires_grad
    proj = sum(p.numel() for p in ov.model.model.multi_modal_projector.parameters())
    assert counts["projector"].trainable == proj + ov.model.model.image_newline.numel()
    assert counts["llm"].trainable == counts["vision"].trainable == 0


def test_real_onevision_pinpoints_are_llava_hf_s():
    cfg = to_object(compose_config(["+experiment=onevision_si_7b"]))
    assert cfg.arch.type == "llava_onevision" and cfg.vision.name == "siglip_so400m"
    from transformers import LlavaOnevisionConfig

    assert anyres_pinpoints(cfg.arch, 384) == LlavaOnevisionConfig().image_grid_pinpoints


def test_token_counts_are_the_processors_and_the_models(ov):
    """The count computed from the size alone (before decoding) equals what the processor
    expands and what the model's features fill, for single images of every shape and for a
    multi-image sample (base views only); the plan's size-only processor agrees."""
    image_id = ov.processor.image_token_id
    plan_counter = size_only_processor(32, ov.model.config.image_grid_pinpoints, 16,
                                       "anyres_max_4", "full")  # fmt: skip
    cases = [[s] for s in SIZES] + [[(64, 64), (40, 96)]]
    seen = set()
    for sizes in cases:
        images = [Image.new("RGB", s) for s in sizes]
        enc = ov.processor(images=[images], text=[_prompt(ov.processor, len(sizes))],
                           return_tensors="pt")  # fmt: skip
        expanded = int((enc["input_ids"] == image_id).sum())
        hw = [(h, w) for w, h in sizes]
        assert sum(anyres_token_counts(ov.processor, hw)) == expanded, sizes
        assert anyres_token_counts(plan_counter, hw) == anyres_token_counts(ov.processor, hw)
        with torch.no_grad():
            ov.model(**enc)  # a count off by one raises "Image features and image tokens..."
        seen.add(expanded)
    assert len(seen) >= 6, f"the shapes should give different counts: {seen}"


def test_encoded_lengths_batches_and_the_placeholder_row(ov):
    enc = SampleEncoder(ov.processor, EncodeOptions("chat", 16, 512, "skip", False, anyres=True))
    small, wide, multi = (enc.tokenize(_sample(i, s)) for i, s in
                          enumerate([[(32, 32)], [(96, 40)], [(64, 64), (40, 96)]]))  # fmt: skip
    text_only = enc.tokenize(_sample(3, []))
    counts = {k: anyres_token_counts(ov.processor, [(h, w) for w, h in s]) for k, s in
              (("small", [(32, 32)]), ("wide", [(96, 40)]), ("multi", [(64, 64), (40, 96)]))}  # fmt: skip
    # The encoded length (what length grouping and max_length see) holds the real counts.
    image_id = ov.model.config.image_token_index
    for t, k in ((small, "small"), (wide, "wide"), (multi, "multi")):
        assert t.input_ids.count(image_id) == sum(counts[k])
    assert wide.length - small.length == counts["wide"][0] - counts["small"][0] > 0
    placeholder = enc.image_placeholder(image_id)
    batch = Collator(ov.tokenizer.pad_token_id, placeholder)(
        [enc.finish(t) for t in (small, wide, multi, text_only)]
    )
    assert batch["pixel_values"].shape[:2] == (4, 7)  # 4 images, views padded to the 3x3 grid's
    assert batch["batch_num_images"].tolist() == [1, 1, 2, 0]
    assert batch["image_sizes"].tolist() == [[32, 32], [40, 96], [64, 64], [96, 40]]
    assert "placeholder_rows" not in batch
    loss = ov.model(**{k: batch[k] for k in MODEL_KEYS}).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert ov.model.model.image_newline.grad.abs().sum() > 0  # the newline reaches the loss
    ov.model.zero_grad()
    # A text-only micro-batch gets one masked image row so ZeRO-3 ranks run the same modules;
    # the loss does not change.
    items = [enc.finish(text_only), enc.finish(enc.tokenize(_sample(4, [], "Two words.")))]
    plain = Collator(ov.tokenizer.pad_token_id)(items)
    padded = Collator(ov.tokenizer.pad_token_id, placeholder)(items)
    assert padded["placeholder_rows"] == 1 and padded["batch_num_images"].tolist() == [0, 0, 1]
    assert int((padded["input_ids"][2] == image_id).sum()) == placeholder.num_tokens
    with torch.no_grad():
        a = ov.model(**{k: plain[k] for k in MODEL_KEYS if k in plain}).loss
        b = ov.model(**{k: padded[k] for k in MODEL_KEYS if k in padded}).loss
    assert torch.allclose(a, b, atol=1e-6)


def test_a_sample_with_tags_and_images_disagreeing_is_a_counted_skip(ov):
    enc = SampleEncoder(ov.processor, EncodeOptions("chat", 16, 512, "skip", False, anyres=True))
    sample = _sample(0, [(32, 32)])
    meta = json.loads(sample["json"])
    meta["images"].append("img1.png")
    sample |= {"json": json.dumps(meta), "img1.png": _png((40, 96))}
    skip = enc.tokenize(sample)
    assert skip.reason == "image_tag_mismatch" and "1 <image> tag(s), 2 image(s)" in skip.detail
    sample["img1.png"] = b"not an image"
    assert enc.tokenize(sample).reason == "corrupt_image"


def test_stage_hand_over_between_archs(cache_dir, ov, tmp_path, caplog):
    llava = build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2")
    assert type(llava.model) is LlavaForConditionalGeneration
    llava.model.save_pretrained(tmp_path / "llava")
    target = build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2", overrides=OV).model
    newline = target.model.image_newline.detach().clone()
    with caplog.at_level(logging.WARNING, logger="llava_ablate.model.init_from"):
        load_parts(target, tmp_path / "llava", ["projector"])
    # OneVision's stage 1 is LLaVA's fixed-resolution alignment: its projector carries over and
    # image_newline, which LLaVA has not, keeps its initialisation (and the log says so).
    a, b = llava.model.model.multi_modal_projector, target.model.multi_modal_projector
    assert torch.equal(a.linear_1.weight, b.linear_1.weight)
    assert torch.equal(target.model.image_newline, newline)
    assert "model.image_newline" in caplog.text
    ov.model.save_pretrained(tmp_path / "ov")
    load_parts(target, tmp_path / "ov", ["projector"])
    assert torch.equal(target.model.image_newline, ov.model.model.image_newline)
    with pytest.raises(KeyError, match="another arch"):
        load_parts(llava.model, tmp_path / "ov", ["projector"])


def test_plan_sizes_anyres_by_the_largest_grid(cache_dir, ov):
    cfg = to_object(compose_config(
        ["vision=tiny_siglip", "llm=tiny_qwen2", *OV, f"paths.cache_dir={cache_dir}"]
    ))  # fmt: skip
    size = model_size(cfg)
    assert size.params == sum(p.numel() for p in ov.model.parameters())
    pinpoints = ov.model.config.image_grid_pinpoints
    largest = max(anyres_token_counts(ov.processor, [tuple(p)])[0] for p in pinpoints)
    assert size.image_tokens == largest == 88  # 3x3 crops downsampled to anyres_max_4
    assert size.vision_tokens == (1 + 9) * 16  # the tower sees the base view and 9 crops

    # The real OneVision SI job. The most LLM tokens come from a tall 5x2 grid: 135 x 54
    # features stay under the 1.1 downsampling threshold of anyres_max_9 (+ 135 newlines + the
    # 729 of the base view); the tower encodes up to 1 + 36 views of 729 (a 6x6 grid).
    real = to_object(compose_config(["+experiment=onevision_si_7b"]))
    ov7 = model_size(real)
    assert (ov7.image_tokens, ov7.vision_tokens) == (135 * 54 + 135 + 729, 37 * 729)
    flat = model_size(to_object(compose_config(["+experiment=onevision_si_7b", "arch=llava"])))
    assert flat.image_tokens == 729 and flat.vision_tokens is None
    assert ov7.total["projector"] == flat.total["projector"] + 3584  # + image_newline
    kw = dict(zero_stage=3, world=8, precision="bf16", micro_batch=1, seq_len=8192,
              gradient_checkpointing=True)  # fmt: skip
    assert memory_per_rank(ov7, **kw).activations > memory_per_rank(flat, **kw).activations


TINY_OV = [*OV, "vision=tiny_siglip", "llm=tiny_qwen2", "recipe.max_length=256",
           "recipe.max_steps=4"]  # fmt: skip


@pytest.mark.slow  # two torchrun x DeepSpeed launches + evaluate.py: ~2 CPU-minutes
def test_two_stages_under_zero3_export_generate_and_evaluate(train_launcher, tmp_path):
    """Stage 1 (ZeRO-2) -> stage 2 (ZeRO-3, projector frozen) on images of seven shapes, the
    export loaded the stock way and asked with generate, then evaluate.py on multi-tile
    images with likelihood and generate."""
    from safetensors.torch import load_file

    from conftest import read_metrics

    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    train_launcher(["+experiment=tiny_align", *TINY_OV, "data=toy_captions_anyres",
                    "deepspeed=zero2", f"train.run_dir={s1}"])  # fmt: skip
    out = train_launcher(["+experiment=tiny_finetune", *TINY_OV, "data=toy_instruct_anyres",
                          "deepspeed=zero3", f"train.run_dir={s2}",
                          f"recipe.init_from={s1 / 'export'}", "recipe.lr.projector=null"])  # fmt: skip
    assert "anyres over grids of 1..3 crops" in out.stderr + out.stdout
    assert all(r["loss"] == r["loss"] for r in read_metrics(s2))  # finite, logged every step
    w1, w2 = load_file(s1 / "export/model.safetensors"), load_file(s2 / "export/model.safetensors")
    # The connector (projector + image_newline) was handed over under ZeRO-3 and stayed frozen.
    connector = [k for k in w1 if "multi_modal_projector" in k or k == "image_newline"]
    assert "image_newline" in connector and all(torch.equal(w1[k], w2[k]) for k in connector)
    llm = [k for k in w1 if "layers.0.self_attn.q_proj" in k]
    assert llm and not all(torch.equal(w1[k], w2[k]) for k in llm)

    _export_generates_and_evaluates(s2 / "export", tmp_path)


def _export_generates_and_evaluates(export, tmp_path):
    import os
    import subprocess
    import sys

    import eval_fixtures as fx
    from transformers import AutoProcessor

    from llava_ablate.base.video_processors import allow_video_processors

    from conftest import ROOT

    allow_video_processors()  # this machine has no torchvision (a no-op where it is installed)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(export)
    processor = AutoProcessor.from_pretrained(export)
    assert type(processor) is LlavaOnevisionProcessor
    inputs = processor(images=Image.new("RGB", (96, 40)), text=_prompt(processor),
                       return_tensors="pt")  # fmt: skip
    assert inputs["pixel_values"].shape[1] == 7  # base view + a 2x3 grid of crops
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert inputs["input_ids"].shape[1] < generated.shape[1] <= inputs["input_ids"].shape[1] + 4

    root = tmp_path / "shapes"
    for c, name in enumerate(["red", "green", "blue"]):
        for i, size in enumerate(SIZES[1:5]):
            fx.img(root / name / f"{i}.png", c * 10 + i, size=size)
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"model.path={export}",
           "eval/datasets=[image_folder]", f"eval.datasets.image_folder.root={root}",
           "eval.scoring.scorers=[likelihood,generate]", "eval.scoring.max_new_tokens=3",
           "eval.scoring.batch_size=4", "eval.stats.bootstrap=100", "model.dtype=fp32",
           f"eval.questions.dir={tmp_path / 'questions'}", f"out_dir={tmp_path / 'eval'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # model.image_aspect=auto: OneVision's own tiling at the image's aspect ratio, no padding.
    assert "image_aspect=auto: native" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval/image_folder/metrics.json").read_text())
    assert metrics["image_aspect"] == "native"
    preds = [json.loads(x) for x in
             (tmp_path / "eval/image_folder/predictions.jsonl").read_text().splitlines()]  # fmt: skip
    assert sorted({p["scorer"] for p in preds}) == ["generate", "likelihood"]
    assert len(preds) == 2 * 12 and all(p["pred"] in ("A", "B", "C", None) for p in preds)


def test_plan_of_an_anyres_job_on_built_data(cache_dir, ov, monkeypatch, tmp_path):
    """With the shards built, the plan counts image tokens at each source's mean image size
    (labelled an estimate) and sizes the longest sample by the largest grid."""
    from llava_ablate.data.builtin import prepare_builtin
    from llava_ablate.data.mixture import open_mixture
    from llava_ablate.data.shards import MANIFEST
    from llava_ablate.launch.grid import expand, load_grid
    from llava_ablate.launch.plan import compose_job, format_plan, plan_grid

    monkeypatch.setenv("LLAVA_CACHE_DIR", str(cache_dir))
    grid_yaml = tmp_path / "ov.yaml"
    grid_yaml.write_text(
        "name: ov\naxes: {arch: [llava, tiny_onevision]}\n"
        "common: [+experiment=tiny_finetune, recipe.init_from=null, vision=tiny_siglip, "
        "llm=tiny_qwen2, data=toy_instruct_anyres, recipe.max_length=256]\n"
        "launcher: [hydra/launcher=slurm, hydra.launcher.tasks_per_node=1, "
        "hydra.launcher.gpus_per_node=1]\ngpu: a100-80gb\n"
    )
    grid = load_grid(str(grid_yaml), runs_root=str(tmp_path / "runs"))
    cfg = compose_job(expand(grid)[0], grid, [])[0]
    prepare_builtin(cfg.data, cfg.train.seed)
    llava, anyres = plan_grid(grid)
    assert llava.size.anyres is None and llava.data.image_tokens is None
    src = open_mixture(cfg.data, cfg.train.seed).sources[0]
    m = json.loads((src.dir / MANIFEST).read_text())
    mean = (round(m["image_height"]["mean"]), round(m["image_width"]["mean"]))
    assert anyres.data.image_tokens == anyres_token_counts(ov.processor, [mean])[0]
    assert anyres.data.tokens_per_sample > llava.data.tokens_per_sample  # more than 16 a image
    assert anyres.data.longest > llava.data.longest
    text = format_plan(grid, [llava, anyres])
    assert "#2 anyres image tokens per image: up to 88 (tower 160, the largest grid)" in text
    assert "at the mean image size" in text and "anyres tokens at the mean image size" in (
        anyres.data.source
    )


def test_every_scorer_on_multi_tile_images(ov, tmp_path):
    """The evaluator's three scorers on the in-memory variant (as the training hook uses it):
    batches of images on different grids, likelihood agreeing with a full forward per item."""
    import eval_fixtures as fx

    from llava_ablate.eval.layouts import load_dataset
    from llava_ablate.eval.models import MLLMChoiceModel
    from llava_ablate.eval.questions import build_question_set
    from llava_ablate.eval.run import evaluate_dataset, item_maker
    from llava_ablate.eval_config import DatasetCfg, EvalCfg, ScoringCfg

    for c, name in enumerate(["red", "green", "blue"]):
        for i, size in enumerate(SIZES[2:6]):
            fx.img(tmp_path / "shapes" / name / f"{i}.png", c * 10 + i, size=size)
    data = load_dataset("shapes", DatasetCfg(kind="image_folder", root=str(tmp_path / "shapes")))
    ecfg = EvalCfg(scoring=ScoringCfg(scorers=["likelihood", "name_likelihood", "generate"],
                                      batch_size=4, max_new_tokens=3))  # fmt: skip
    questions = build_question_set(data, ecfg.questions)
    model = MLLMChoiceModel(ov.model.eval(), ov.processor, max_new_tokens=3)
    make = item_maker(data, ecfg, ov.processor.image_processor, pad=False)
    m = evaluate_dataset(model, data, questions, ecfg, tmp_path / "out", make_item=make,
                         model_name="ov")  # fmt: skip
    assert m["n_questions"] == 12
    preds = [json.loads(x) for x in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 36 and {p["scorer"] for p in preds} == set(ecfg.scoring.scorers)
    # The batched, right-padded letter scores equal one plain forward per question.
    items = [make(q) for q in questions.questions[:4]]
    views = {tower_views(ov.processor, (it.image.height, it.image.width)) for it in items}
    assert len(views) > 1 and max(views) > 2, views  # one batch, images on different grids
    batched = model.letter_scores(items)
    for row, it in zip(batched, items, strict=True):
        text = model._inputs([it], "right", model.answer_prefix)
        with torch.no_grad():
            logits = ov.model(**text).logits[0, -1]
        single = torch.log_softmax(logits.float(), -1)[model.letter_ids].numpy()
        assert abs(row - single).max() < 1e-4


def test_arch_names_the_run_and_enters_its_hash(tmp_path):
    from pathlib import Path

    from llava_ablate.run_identity import axes_of, config_hash, result_config

    def compose(*extra):
        return compose_config(["llm=qwen2", "vision=siglip_so400m", "data=si32m",
                               f"train.runs_root={tmp_path}", *extra])  # fmt: skip

    llava, onevision = compose(), compose("arch=llava_onevision")
    flat, anyres = Path(llava.train.run_dir).name, Path(onevision.train.run_dir).name
    assert flat.startswith("qwen2-siglip_so400m-mlp2x_gelu-si32m-finetune-")  # names kept
    assert anyres.startswith("llava_onevision-qwen2-siglip_so400m-mlp2x_gelu-si32m-finetune-")
    assert flat[-8:] != anyres[-8:]
    grid = compose("arch=llava_onevision", "arch.grid_tiles=4")  # any arch key is hashed
    assert config_hash(result_config(grid)) != config_hash(result_config(onevision))
    # arch=llava, what every run was before the axis, leaves the hash (and names) of those runs
    # as they were; its anyres keys cannot change a llava run and are not hashed either.
    assert "arch" not in result_config(llava)
    inert = compose("arch.grid_tiles=4")
    assert Path(inert.train.run_dir).name == flat
    axes = axes_of(result_config(onevision))
    assert axes["arch"] == "llava_onevision" and list(axes)[0] == "arch"


@pytest.mark.parametrize(
    "override,match",
    [
        ("arch.type=llava_next", r"^arch\.type='llava_next' is not allowed"),
        ("arch.vision_aspect_ratio=max9", r"^arch\.vision_aspect_ratio='max9': give anyres_max_"),
        ("arch.grid_tiles=0", r"^arch\.grid_tiles=0 is out of range"),
    ],
)
def test_bad_arch_values_fail_naming_the_key(override, match):
    from llava_ablate.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        to_object(compose_config(["arch=llava_onevision", override]))


def test_packed_anyres_rows_give_the_unpacked_loss(ov):
    """Packing (data.batching=pack) puts several samples' images in one row; OneVision tiles an
    image only when its *sample* has one image (batch_num_images), so the count must be per
    sample, not per packed row, or the features no longer match the expanded tokens."""
    enc = SampleEncoder(ov.processor, EncodeOptions("chat", 16, 512, "skip", False, anyres=True))
    toks = [enc.tokenize(_sample(i, s, "A red box " * (i + 1))) for i, s in
            enumerate([[(32, 32)], [(96, 40)], [], [(64, 64), (40, 96)], [(50, 40)]])]  # fmt: skip
    rows = pack_window(toks, 1, 512)[0]
    assert max(len(r) for r in rows) > 1 and sum(len(r) for r in rows) == len(toks)
    finished = {t.id: enc.finish(t) for t in toks}
    pad = ov.tokenizer.pad_token_id
    plain = Collator(pad)([finished[t.id] for t in toks])
    packed = Collator(pad, packed=True).rows([[finished[x.id] for x in r] for r in rows])
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]
    keys = (*MODEL_KEYS, "position_ids")
    with torch.no_grad():
        a = ov.model(**{k: plain[k] for k in keys if k in plain}, use_cache=False).loss
        b = ov.model(**{k: packed[k] for k in keys if k in packed}, use_cache=False).loss
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
