"""Fault injection into the evaluator: unreadable images are skipped, counted and named; layouts
are checked before the model loads; unknown ImageNet wnids and long class names give clear
answers; single accuracies get intervals that do not collapse at 0 or 1."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import eval_fixtures as fx
import numpy as np
import pytest
import torch

from llava_ablate.eval.datasets import DatasetLayoutError
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.questions import build_question_set
from llava_ablate.eval.run import evaluate_dataset, item_maker, run_evaluation
from llava_ablate.eval_config import (
    DatasetCfg,
    EvalCfg,
    EvaluateConfig,
    HookCfg,
    ModelCfg,
    ScoringCfg,
    StatsCfg,
)


class Oracle:
    """Prefers the true letter, so every scored question is right."""

    scorers = ("likelihood",)

    def letter_scores(self, items):
        out = np.zeros((len(items), 26), dtype=np.float32)
        for i, it in enumerate(items):
            out[i, it.question.answer_index] = 1.0
        return out


def _damage(folder: Path) -> tuple[Path, Path, Path]:
    """Three classes x 3 images; one truncated, one not an image, one deleted after listing."""
    for c in range(3):
        for i in range(3):
            fx.img(folder / f"class{c}" / f"{i}.png", c * 10 + i, size=(24, 24))
    truncated, garbage, gone = (
        folder / "class0" / "1.png",
        folder / "class1" / "2.png",
        folder / "class2" / "0.png",
    )
    truncated.write_bytes(truncated.read_bytes()[:60])
    garbage.write_bytes(b"this is not a png")
    return truncated, garbage, gone


def _eval(ds, out, compare_to=None):
    ecfg = EvalCfg(
        scoring=ScoringCfg(scorers=["likelihood"], batch_size=4),
        stats=StatsCfg(compare_to=str(compare_to) if compare_to else None),
    )
    qs = build_question_set(ds, ecfg.questions)
    return evaluate_dataset(Oracle(), ds, qs, ecfg, out, make_item=item_maker(ds, ecfg)), qs


def test_unreadable_eval_images_are_skipped_counted_and_named(tmp_path, caplog):
    truncated, garbage, gone = _damage(tmp_path / "data")
    ds = load_dataset("damaged", DatasetCfg(kind="image_folder", root=str(tmp_path / "data")))
    gone.unlink()  # listed, then lost (a network filesystem, a partial copy)
    with caplog.at_level(logging.WARNING):
        m, qs = _eval(ds, tmp_path / "out")
    assert m["n_questions"] == 9 and m["n_scored"] == 6
    skipped = m["skipped"]
    assert skipped["by_reason"] == {
        "truncated_image": 1,
        "unreadable_image": 1,
        "missing_image": 1,
    }
    assert skipped["total"] == 3 and len(skipped["qids"]) == 3
    assert {s["image"] for s in skipped["items"]} == {str(truncated), str(garbage), str(gone)}
    acc = m["scorers"]["likelihood"]["accuracy"]
    assert acc["value"] == 1.0 and acc["n"] == 6
    assert m["scorers"]["likelihood"]["n_skipped"] == 3
    # The question set stays frozen: the skipped questions are still in it.
    assert m["question_set"]["fingerprint"] == qs.fingerprint() and len(qs.questions) == 9
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["skipped"]["by_reason"] == skipped["by_reason"]
    assert str(truncated) in caplog.text and "truncated_image" in caplog.text
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_class.csv")))
    assert sum(int(r["n"]) for r in rows) == 6

    # Resuming keeps the same answer (skips are re-found, not forgotten or double counted).
    again, _ = _eval(ds, tmp_path / "out")
    assert again["skipped"] == skipped and again["scorers"] == m["scorers"]


def test_paired_comparison_uses_the_shared_questions_and_says_so(tmp_path):
    _damage(tmp_path / "data")
    ds = load_dataset("damaged", DatasetCfg(kind="image_folder", root=str(tmp_path / "data")))
    clean_root = tmp_path / "clean"
    for c in range(3):
        for i in range(3):
            fx.img(clean_root / f"class{c}" / f"{i}.png", c * 10 + i, size=(24, 24))
    clean = load_dataset("damaged", DatasetCfg(kind="image_folder", root=str(clean_root)))
    _eval(clean, tmp_path / "a" / "damaged")  # evaluate.py's layout: <out_dir>/<dataset>/
    m, _ = _eval(ds, tmp_path / "b" / "damaged", compare_to=tmp_path / "a")
    cmp = m["compare_to"]["likelihood"]
    assert cmp["n"] == 7 and cmp["unpaired"] == 2 and cmp["paired_on"] == "shared questions"

    from llava_ablate.eval.stats import paired_on_shared

    a = {"q1": True, "q2": False, "q3": True}
    b = {"q1": True, "q3": False, "q4": True}
    pc = paired_on_shared(a, b, n_boot=200)
    assert (pc.n, pc.unpaired, pc.a_only, pc.b_only) == (2, 2, 1, 0)


def test_training_hook_skips_unreadable_images(cache_dir, tmp_path):
    from llava_ablate.eval.hook import TrainingEvalHook

    from conftest import build_tiny

    truncated, _, _ = _damage(tmp_path / "data")
    cfg = EvalCfg(
        datasets={"damaged": DatasetCfg(kind="image_folder", root=str(tmp_path / "data"))},
        scoring=ScoringCfg(scorers=["likelihood", "name_likelihood"], batch_size=4),
        hook=HookCfg(at_end=True, max_questions=None),
    )
    torch.manual_seed(0)
    variant = build_tiny(cache_dir)
    hook = TrainingEvalHook(cfg, variant.processor, tmp_path / "run")
    flat = hook.maybe_run(variant.model, 3, final=True)
    assert flat["eval/damaged/skipped"] == 2
    m = json.loads((tmp_path / "run/eval/step_3/damaged/metrics.json").read_text())
    assert m["skipped"]["by_reason"] == {"truncated_image": 1, "unreadable_image": 1}
    assert m["scorers"]["likelihood"]["accuracy"]["n"] == 7
    assert str(truncated) in {s["image"] for s in m["skipped"]["items"]}


def test_dataset_layouts_are_checked_before_the_model_loads(tmp_path):
    cfg = EvaluateConfig(
        model=ModelCfg(type="mllm", path=str(tmp_path / "no-such-model")),
        eval=EvalCfg(datasets={"cub": DatasetCfg(kind="cub200", root=str(tmp_path / "nope"))}),
        out_dir=str(tmp_path / "out"),
    )
    with pytest.raises(DatasetLayoutError, match="CUB_200_2011 directory"):
        run_evaluation(cfg)


def test_imagenet_flat_unknown_wnid_names_the_wnid_and_the_file(tmp_path):
    root = fx.imagenet_flat(tmp_path)
    solution = root / "LOC_val_solution.csv"
    solution.write_text(solution.read_text() + "ILSVRC2012_val_00000003,n99999999 1 2 3 4\n")
    fx.img(root / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG", 3)
    with pytest.raises(DatasetLayoutError, match=r"LOC_val_solution.csv:4: 'n99999999' is not"):
        load_dataset("imagenet", DatasetCfg(kind="imagenet", root=str(root), split="val"))


def test_imagenet_synset_mapping_names_wnids_outside_the_table(tmp_path):
    root = fx.imagenet_flat(tmp_path)
    solution = root / "LOC_val_solution.csv"
    solution.write_text(solution.read_text() + "ILSVRC2012_val_00000003,n99999999 1 2 3 4\n")
    fx.img(root / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG", 3)
    (root / "LOC_synset_mapping.txt").write_text(
        "n01751748 sea snake\nn99999999 purple triangle, violet trigon\n"
    )
    ds = load_dataset("imagenet", DatasetCfg(kind="imagenet", root=str(root), split="val"))
    labels = {s.id: ds.classnames[s.label] for s in ds.samples}
    assert labels["ILSVRC2012_val_00000003"] == "purple triangle"
    assert labels["ILSVRC2012_val_00000001"] == "sea snake"  # the shipped table's own name
    assert len(ds.classnames) == 1001


def test_wnids_beyond_imagenet_1k_are_warned_about_and_counted(tmp_path, caplog):
    """A mapping file naming wnids outside the 1000 widens the candidate list: said, not silent."""
    root = fx.imagenet_flat(tmp_path)
    (root / "LOC_synset_mapping.txt").write_text(
        "n01751748 sea snake\nn99999998 green square\nn99999999 purple triangle, trigon\n"
    )
    with caplog.at_level(logging.WARNING, logger="llava_ablate.eval.layouts"):
        ds = load_dataset("imagenet", DatasetCfg(kind="imagenet", root=str(root), split="val"))
    assert ds.extra_classes == ["n99999998 green square", "n99999999 purple triangle"]
    assert "2 wnid(s) outside ImageNet-1k" in caplog.text and "1002 in all" in caplog.text
    m, _ = _eval(ds, tmp_path / "out" / "imagenet")
    assert m["extra_classes"] == {
        "count": 2,
        "num_classes": 1002,
        "classes": ["n99999998 green square", "n99999999 purple triangle"],
    }
    saved = json.loads((tmp_path / "out/imagenet/metrics.json").read_text())
    assert saved["extra_classes"]["count"] == 2
    # Sub-sampling (eval.datasets.<name>.total=N) keeps them, and a dataset's reader.
    from llava_ablate.eval.datasets import subsample

    assert subsample(ds, None, 1, seed=0).extra_classes == ds.extra_classes


def test_stanford_cars_names_year_first_by_default_and_year_last_on_request(tmp_path):
    root = fx.stanford_cars(tmp_path)
    first = load_dataset("cars", DatasetCfg(kind="stanford_cars", root=str(root)))
    assert sorted(first.classnames) == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    last = load_dataset("cars", DatasetCfg(kind="stanford_cars", root=str(root), year_first=False))
    assert sorted(last.classnames) == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]


def _short_clip(tok, max_positions: int):
    """A CLIP with mini-CLIP's tokenizer and a text tower of `max_positions` positions."""
    from transformers import CLIPConfig, CLIPModel

    from llava_ablate.model.mini_clip import TOWER, text_config

    return CLIPModel(
        CLIPConfig(
            text_config=text_config(tok, max_positions).to_dict(),
            vision_config={**TOWER, "num_hidden_layers": 1},
            projection_dim=16,
        )
    ).eval()


def test_zero_shot_truncates_long_class_names_to_the_text_tower(cache_dir):
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    from llava_ablate.eval.baselines import ZeroShotChoiceModel
    from llava_ablate.eval.text_encoders import HFTextTower
    from llava_ablate.model.mini_clip import caption_tokenizer

    torch.manual_seed(0)
    tok = caption_tokenizer(cache_dir)
    model = _short_clip(tok, 14)  # the mini-CLIP as built before: 14 text positions
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tok,
    )
    long_names = ["purple triangle", "a very long name " * 12, "imagenet-sized " * 8]
    zs = ZeroShotChoiceModel(model, processor, ["a photo of a {}."]).with_classes(long_names)
    assert zs._class_matrix.shape[0] == 3
    rows = HFTextTower(model, tok)(long_names)
    assert rows.shape[0] == 3 and np.isfinite(rows).all()


def test_mini_clip_has_room_and_a_changed_config_rebuilds(cache_dir, tmp_path):
    from llava_ablate.model.mini_clip import build_mini_clip

    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.csv").write_text("c0,purple triangle\nc1,a red circle\n")
    for k in ("c0", "c1"):
        for i in range(2):
            fx.img(data / "train_common" / k / f"{i}.png", i, size=(32, 32))
    (data / "train_rare").mkdir()
    out = tmp_path / "towers" / "mini_clip"
    build_mini_clip(out, data, steps=2)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] >= 77
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    build_mini_clip(out, data, steps=2)  # same config: kept
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    build_mini_clip(out, data, steps=3)  # another config: rebuilt, not silently reused
    assert json.loads((out / "training.json").read_text())["steps"] == 3


def test_single_accuracy_interval_does_not_collapse_at_0_or_1():
    from llava_ablate.eval.stats import wilson_accuracy

    for correct in ([True] * 50, [False] * 50):
        est = wilson_accuracy(correct)
        assert est.ci_high - est.ci_low > 0.05, est
        assert est.ci_low <= est.value <= est.ci_high
    est = wilson_accuracy([True] * 50)
    # Wilson 95% for 50/50 by hand: [n / (n + z^2), 1] = [0.9287, 1].
    assert est.ci_low == pytest.approx(50 / (50 + 1.959964**2), abs=1e-4) and est.ci_high == 1.0
