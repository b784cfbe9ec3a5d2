"""Evaluation grids (launch/*.yaml of `kind: evaluate`, and training grids' evaluation stages)
and the paper-style table: the paper's grid composed and planned without downloads, the
training grids ending with their evaluation, the table's figures against the results files;
and on real Slurm a 2 x 2 evaluation grid (two tiny models x two generated datasets) through
the launcher, then `llava-ablate report`'s table."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import eval_fixtures as fx
import numpy as np
import pytest
from PIL import Image
from test_report import _write_dataset
from test_slurm_grid import _env, slurm  # noqa: F401 - the session fixture

from llava_ablate.eval.families import supported

from conftest import ROOT, build_tiny

PAPER_DATASETS = ["imagenet", "imagenetv2", "objectnet", "caltech101", "cub200", "food101",
                  "gldv2", "flickr_sportlogos10", "flowers102", "stanford_cars"]  # fmt: skip


def _plan_args(grid: str, runs_root: Path, *overrides: str) -> argparse.Namespace:
    return argparse.Namespace(grid=grid, overrides=list(overrides), runs_root=str(runs_root),
                              gpu=None)  # fmt: skip


KNOWN_FAMILIES = {
    "llava-hf/llava-1.5-7b-hf": "llava",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava_onevision",
    "llava-hf/llava-v1.6-mistral-7b-hf": "llava_next",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "OpenGVLab/InternVL3-8B-hf": "internvl",
}


def test_paper_models_is_composed_and_planned_without_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail the plan
    from llava_ablate.launch.plan_any import plan_any
    from llava_ablate.launch.units import make_eval_units

    grid, _, evals, text = plan_any(_plan_args("paper_models", tmp_path))
    assert grid.baseline == "clip_l14_336"
    paths = {m.name: (m.type, m.path) for m in grid.models}
    assert paths == {
        "llava15_7b": ("mllm", "llava-hf/llava-1.5-7b-hf"),
        "onevision_7b": ("mllm", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        "qwen2vl_7b": ("mllm", "Qwen/Qwen2-VL-7B-Instruct"),
        "llava_next_7b": ("mllm", "llava-hf/llava-v1.6-mistral-7b-hf"),
        "qwen25vl_7b": ("mllm", "Qwen/Qwen2.5-VL-7B-Instruct"),
        "internvl3_8b": ("mllm", "OpenGVLab/InternVL3-8B-hf"),
        "clip_l14_336": ("clip", "openai/clip-vit-large-patch14-336"),
        "siglip_so400m": ("siglip", "google/siglip-so400m-patch14-384"),
        "siglip2_so400m": ("siglip", "google/siglip2-so400m-patch14-384"),
    }
    # Every MLLM's family is one the evaluator supports (each checked on a tiny model).
    for m in grid.models:
        if m.type == "mllm":
            assert KNOWN_FAMILIES[m.path] in supported(), m.path
    # Every (model, dataset, strategy) once; one Slurm array per model and strategy.
    keys = {(j.model, j.dataset, j.distractors) for j in evals}
    assert len(evals) == len(keys) == 9 * 10 * 3
    assert {j.dataset for j in evals} == set(PAPER_DATASETS)
    assert {j.distractors for j in evals} == {"random", "hard", "protocol"}
    assert len(make_eval_units(evals)) == 27
    assert "270 evaluation jobs, 270 to run in 27 Slurm arrays" in text
    # Questions from the splits' published sizes (no data here), tokens and GPU-hours.
    line = next(x for x in text.splitlines() if " llava15_7b " in x and " imagenet " in x)
    assert "~50,000" in line and "7.06B" in line
    _protocol_arm_is_planned(text, evals)
    assert "GPU-hours to run: " in text and "GPU-hours: unknown" not in text
    report = f"llava-ablate report {tmp_path / 'paper_models' / 'random'} --baseline clip_l14_336"
    assert report in text
    one = evals[0]
    assert one.out_dir == tmp_path / "paper_models" / "random" / "llava15_7b"
    assert "model.path=llava-hf/llava-1.5-7b-hf" in one.overrides
    assert not (tmp_path / "paper_models").exists()  # planning writes nothing


def _protocol_arm_is_planned(text: str, evals) -> None:
    """The protocol arm runs eval=protocol and is counted arm by arm: on ImageNet, 2000 sampled
    questions x (k = 2, 4, 10, 26 -- the last also the random distractors and the first
    wording --; all classes; hard and image distractors; 2 more wordings; 26 rotations; open
    answers) = 2000 x 36 scoring units, its all-classes arm scoring 1000 class names each."""
    from llava_ablate.launch.evalplan import KNOWN_CLASS_COUNTS

    job = next(j for j in evals if j.distractors == "protocol" and j.model == "llava15_7b")
    assert "eval=protocol" in job.overrides and job.out_dir.parent.name == "protocol"
    rows = {x.split()[4]: x for x in text.splitlines()
            if " llava15_7b " in x and " imagenet " in x}  # fmt: skip
    assert "~72,000" in rows["protocol"]  # the questions (scoring units) column
    assert "protocol rows: every arm of the sweep" in text and "GPU-hours" in text
    tokens = [float(r.split()[-3].rstrip("BM")) * (1e9 if r.split()[-3].endswith("B") else 1e6)
              for r in (rows["random"], rows["protocol"])]  # fmt: skip
    assert tokens[1] > 36 * 2000 / 50_000 * tokens[0]  # longer prompts for all classes
    assert KNOWN_CLASS_COUNTS["imagenet"] == 1000


def test_plan_counts_dynamic_image_tokens_at_the_datasets_image_sizes(tmp_path):
    """Qwen2-VL and InternVL3 tokens come from their image processors' arithmetic at the
    images' sizes (no data here: the typical 375x500 photo), not from a constant."""
    from transformers import GotOcr2ImageProcessorPil, Qwen2VLImageProcessorPil

    from llava_ablate.launch.evalplan import (
        KNOWN_DYNAMIC,
        TYPICAL_IMAGE,
        image_tokens_at,
        model_scale,
    )

    qwen = model_scale("Qwen/Qwen2-VL-7B-Instruct", "mllm")
    # smart_resize(375, 500) -> 364 x 504 px = 26 x 36 patches of 14 px, merged 2x2
    assert image_tokens_at(qwen, [TYPICAL_IMAGE]) == 26 * 36 // 4 == 234
    processor = Qwen2VLImageProcessorPil()
    assert image_tokens_at(qwen, [(1000, 1000)]) == processor.get_number_of_image_patches(
        1000, 1000, {}) // 4 != 234  # fmt: skip
    big = processor.get_number_of_image_patches(1000, 1000, {}) // 4  # capped by max_pixels
    assert image_tokens_at(qwen, [(375, 500), (1000, 1000)]) == round((234 + big) / 2)
    internvl = model_scale("OpenGVLab/InternVL3-8B-hf", "mllm")
    tiles = GotOcr2ImageProcessorPil(
        **dict(KNOWN_DYNAMIC["OpenGVLab/InternVL3-8B-hf"].kwargs)
    ).get_number_of_image_patches(375, 500, {})
    assert tiles > 1 and image_tokens_at(internvl, [TYPICAL_IMAGE]) == 2 + 256 * tiles
    assert image_tokens_at(model_scale("llava-hf/llava-1.5-7b-hf", "mllm"), [(9, 9)]) == 576
    # With the dataset here: the sizes of its own images.
    from types import SimpleNamespace

    from llava_ablate.eval_config import DatasetCfg
    from llava_ablate.launch.evalplan import _image_sizes

    root = fx.digits_folder(tmp_path / "digits", per_class=1)
    cfg = SimpleNamespace(eval=SimpleNamespace(
        datasets={"digits": DatasetCfg(kind="image_folder", root=str(root))},
        questions=SimpleNamespace(seed=0)))  # fmt: skip
    sizes = _image_sizes(SimpleNamespace(dataset="digits"), cfg)
    first = sorted(root.rglob("*.png"))[0]
    assert len(sizes) == 10 and sizes[0] != TYPICAL_IMAGE
    assert {s for s in sizes} == {Image.open(first).size[::-1]}


@pytest.mark.parametrize("grid_name,stage2", [("llm_x_data", "finetune"),
                                              ("vision_x_recipe", "finetune")])  # fmt: skip
def test_training_grids_end_with_their_evaluation(grid_name, stage2, tmp_path):
    from llava_ablate.launch.evalgrid import expand_eval_stages
    from llava_ablate.launch.grid import expand, load_grid, quote
    from llava_ablate.launch.units import make_eval_units, make_units

    grid = load_grid(grid_name, runs_root=str(tmp_path))
    jobs = expand(grid)
    evals = expand_eval_stages(grid, jobs)
    exports = [j for j in jobs if j.stage == stage2]
    assert len(exports) == 4 and len(evals) == 4 * 10 * 2
    for job in evals:
        assert job.parent in exports  # after (afterok) and scoring its own training job
        assert f"model.path={quote(str(job.parent.run_dir / 'export'))}" in job.overrides
        assert "eval.hard.mode=exposure" in job.overrides
        assert "eval.hard.exposure_table=${paths.data_root}/exposure/llava665k.csv" in job.overrides
    assert {j.dataset for j in evals} == set(PAPER_DATASETS)
    assert {id(u.parent) for u in make_eval_units(evals)} == {id(j) for j in exports}
    # Each export's training job is an array of its own, so its evaluations wait for it alone.
    stage2_units = [u for u in make_units(jobs) if u.stage == stage2]
    assert sorted(len(u.jobs) for u in stage2_units) == [1, 1, 1, 1]


def test_plan_of_a_training_grid_sizes_its_evaluations_from_the_training_plan(tmp_path):
    """Before stage 2 has exported anything, its evaluations are sized from its own plan."""
    from llava_ablate.launch.plan_any import plan_any

    grid, jobs, evals, text = plan_any(_plan_args("tiny_chain", tmp_path))
    assert "evaluation stage eval: 2 evaluation jobs, 2 to run in 2 Slurm arrays" in text
    for job in (j for j in jobs if j.stage == "finetune"):
        line = next(x for x in text.splitlines() if f" finetune/{job.name} " in x)
        assert " eval " in line and " image_folder " in line and " random " in line
        assert line.split()[-2] != "?"  # params: from the training job's plan


def test_an_evaluation_stage_must_follow_a_training_stage(tmp_path):
    from llava_ablate.config import ConfigError
    from llava_ablate.launch.grid import load_grid

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\naxes: {llm: [tiny_llama]}\nstages:\n"
                   "  - {name: eval, after: nope, datasets: [imagenet]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="after='nope' is not an earlier training stage"):
        load_grid(str(bad))
    bad.write_text("name: bad\naxes: {llm: [tiny_llama]}\nstages:\n  - {name: train}\n"
                   "  - {name: eval, after: train, datasets: [imagenett]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="'imagenett' is not in conf/eval/datasets/"):
        load_grid(str(bad))
    bad.write_text("name: bad\nkind: evaluate\nmodels: {a: {path: x, typo: 1}}\n"
                   "datasets: [imagenet]\n")  # fmt: skip
    from llava_ablate.launch.evalgrid import load_eval_grid

    with pytest.raises(ConfigError, match=r"models.a: unknown keys \['typo'\]"):
        load_eval_grid(str(bad))


def _write_model(root: Path, name: str, p_right: dict[str, float], rng, fps: dict) -> dict:
    """An evaluate.py results directory with run.json (as an evaluation grid writes it)."""
    out = root / name
    files = {}
    for ds, p in p_right.items():
        correct = rng.random(300) < p
        files[ds] = _write_dataset(out / ds, ds, correct, {"owl"}, fps.get(ds, f"fp-{ds}"))
    (out / "run.json").write_text(json.dumps({"model_type": "mllm", "model_path": name}))
    return files


def _read_csv(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as fh:
        return {(r["model"], r["column"]): r for r in csv.DictReader(fh)}


def test_table_figures_equal_the_results_files_and_flag_paired_tests(tmp_path):
    from llava_ablate.cli import main as cli
    from llava_ablate.eval.stats import paired_comparison

    rng = np.random.default_rng(3)
    grid = tmp_path / "random"
    base = _write_model(grid, "clip", {"digits": 0.5, "shapes": 0.6}, rng, {})
    strong = _write_model(grid, "strong", {"digits": 0.8, "shapes": 0.62}, rng, {})
    out = tmp_path / "t" / "paper.html"
    cli(["report", str(grid), "--baseline", "clip", "--out", str(out), "--bootstrap", "500"])
    rows = _read_csv(out.with_suffix(".csv"))
    md = out.with_suffix(".md").read_text()
    tex = out.with_suffix(".tex").read_text()
    for model, files in (("clip", base), ("strong", strong)):
        for ds in ("digits", "shapes"):
            acc = files[ds]["accuracy"]
            row = rows[(model, ds)]
            assert float(row["accuracy"]) == pytest.approx(acc["value"], abs=1e-12)
            assert float(row["ci_low"]) == pytest.approx(acc["ci_low"], abs=1e-12)
            assert float(row["ci_high"]) == pytest.approx(acc["ci_high"], abs=1e-12)
            cell = (
                f"{100 * acc['value']:.1f} [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]"
            )
            assert cell in md
        mean = np.mean([files[d]["accuracy"]["value"] for d in ("digits", "shapes")])
        assert float(rows[(model, "average")]["accuracy"]) == pytest.approx(mean)
        hard = np.mean([files[d]["hard_accuracy"]["value"] for d in ("digits", "shapes")])
        assert float(rows[(model, "hard")]["accuracy"]) == pytest.approx(hard)
    assert rows[("clip", "digits")]["baseline"] == "True" and "**clip** (baseline)" in md
    # The flags are the exact McNemar test on the same questions, recomputed here.
    for ds in ("digits", "shapes"):
        preds = {m: [json.loads(x)["correct"] for x in (grid / m / ds / "predictions.jsonl")
                     .read_text().splitlines()] for m in ("clip", "strong")}  # fmt: skip
        c = paired_comparison(np.array(preds["clip"]), np.array(preds["strong"]), 500, 0)
        row = rows[("strong", ds)]
        assert float(row["mcnemar_p"]) == pytest.approx(c.mcnemar_p)
        assert row["significant"] == ("up" if c.mcnemar_p < 0.05 and c.delta > 0 else "")
    assert rows[("strong", "digits")]["significant"] == "up"  # 0.8 vs 0.5 on 300 questions
    assert rows[("strong", "shapes")]["significant"] == ""  # 0.62 vs 0.6
    assert "digits: fp-digits (all 2 rows)" in md and "shapes: fp-shapes (all 2 rows)" in md
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$^{\uparrow}$" in tex
    assert r"clip \emph{(baseline)}" in tex and "fp-digits (all 2 rows)" in tex


def test_average_and_hard_columns_are_bootstrapped_over_questions(tmp_path):
    """`average` and `hard` over several datasets: the mean delta against the baseline, its
    interval the paired bootstrap over every dataset's questions (no normal approximation),
    recomputed here by plain index resampling; flagged exactly when it excludes zero."""
    from llava_ablate.report.collect import discover_runs, label_runs, read_run
    from llava_ablate.report.compare import deltas, group_variants, hard_deltas, pick_baseline
    from llava_ablate.report.tables import build_table

    rng = np.random.default_rng(11)
    grid = tmp_path / "random"
    _write_model(grid, "base", {"digits": 0.5, "shapes": 0.5}, rng, {})
    _write_model(grid, "better", {"digits": 0.6, "shapes": 0.6}, rng, {})
    runs = [read_run(p) for p in discover_runs([grid])]
    label_runs(runs)
    variants = group_variants(runs)
    base = pick_baseline(variants, "base")
    items = deltas(variants, base, 500, 0) + hard_deltas(variants, base, 500, 0)
    table = build_table(runs, base, items, scorer="likelihood", n_boot=2000, seed=0)
    row = next(r for r in table.rows if r.label == "better")
    by = {r.path.name: r for r in runs}
    boot = np.random.default_rng(1)
    for cell, hard in ((row.average, False), (row.hard, True)):
        pairs = []
        for ds in ("digits", "shapes"):
            a, b = by["base"].datasets[ds], by["better"].datasets[ds]
            if hard:
                a, b = a.hard_only(), b.hard_only()
            pairs.append((np.array(list(a.correct.values())), np.array(list(b.correct.values()))))
        mean = np.mean([b.mean() - a.mean() for a, b in pairs])
        reps = []
        for _ in range(3000):
            reps.append(np.mean([b[i].mean() - a[i].mean() for a, b in pairs
                                 for i in [boot.integers(0, len(a), len(a))]]))  # fmt: skip
        lo, hi = np.quantile(reps, [0.025, 0.975])
        assert cell.delta == pytest.approx(mean)
        assert (cell.delta_ci_low, cell.delta_ci_high) == pytest.approx((lo, hi), abs=0.01)
        excludes_zero = cell.delta_ci_low > 0 or cell.delta_ci_high < 0
        assert cell.flag == (("up" if mean > 0 else "down") if excludes_zero else None)
    assert row.average.flag == "up"  # 0.5 -> 0.6 on 2 x 300 questions
    # The dataset cells stay on the all-questions tests (the hard ones do not overwrite them).
    digits = next(d for d in items if d.variant == "better" and d.dataset == "digits"
                  and d.subset == "all questions")  # fmt: skip
    assert row.cells["digits"].p_value == digits.comparison.mcnemar_p


def _digits_layouts(root: Path) -> Path:
    """Two generated datasets in real layouts: an image folder and Caltech-101's."""
    fx.digits_folder(root / "my_dataset", per_class=2)  # conf/eval/datasets/image_folder.yaml
    fx.digits_folder(root / "caltech101" / "101_ObjectCategories", per_class=1, num_classes=8)
    return root


def _tiny_llava(cache_dir: Path, root: Path) -> Path:
    llava = root / "tiny_llava"
    variant = build_tiny(cache_dir, llm="tiny_qwen2")
    variant.model.save_pretrained(llava)
    variant.processor.save_pretrained(llava)
    return llava


def _tiny_models(cache_dir: Path, root: Path) -> dict[str, Path]:
    """A tiny LLaVA export (random init) and a tiny CLIP (the zero-shot baseline's type)."""
    from test_eval_models import _tiny_clip

    llava = _tiny_llava(cache_dir, root)
    clip = root / "tiny_clip"
    model, processor = _tiny_clip(cache_dir)
    model.save_pretrained(clip)
    processor.save_pretrained(clip)
    return {"tiny_llava": llava, "tiny_clip": clip}


def _eval_grid_file(
    tmp_path: Path, models: dict[str, Path], data_root: Path, launcher: str, shards: int = 1
) -> Path:
    grid = tmp_path / "tiny_eval.yaml"
    grid.write_text(
        "name: tiny_eval\nkind: evaluate\n"
        f"models:\n  tiny_clip: {{type: clip, path: {models['tiny_clip']}}}\n"
        f"  tiny_llava: {{path: {models['tiny_llava']}, dtype: fp32}}\n"
        "baseline: tiny_clip\ndatasets: [image_folder, caltech101]\ndistractors: [random]\n"
        f"common: [paths.data_root={data_root}, eval.stats.bootstrap=200,"
        " eval.scoring.batch_size=8]\n"
        f"launcher: {launcher}\ngpu: cpu\nshards: {shards}\n"
    )
    return grid


@pytest.mark.slow
def test_eval_grid_2x2_on_slurm_then_the_table_equals_the_results(
    slurm,  # noqa: F811
    cache_dir,
    tmp_path,
):
    """~2 min on 2 CPU cores: 2 arrays (one per model) x 2 datasets, each job 2 Slurm tasks."""
    models = _tiny_models(cache_dir, tmp_path / "models")
    data = _digits_layouts(tmp_path / "data")
    grid = _eval_grid_file(tmp_path, models, data, "[hydra/launcher=slurm_cpu]")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llava_ablate.launch", str(grid), "--runs-root", str(runs)]
    env = _env(cache_dir)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 evaluation jobs, 4 to run in 2 Slurm arrays" in proc.stdout
    for model in ("tiny_clip", "tiny_llava"):
        line = f"submitted evaluate/{model}/random: image_folder, caltech101: Slurm array"
        assert line in proc.stdout
    results = runs / "tiny_eval" / "random"
    script = next((runs / "tiny_eval/.launch").glob("*/.submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --ntasks-per-node=2" in script
    fingerprints = set()
    for model in ("tiny_clip", "tiny_llava"):
        summary = json.loads((results / model / "metrics.json").read_text())
        assert {"image_folder", "caltech101"} <= set(summary)  # both jobs' datasets merged
        for ds, n in (("image_folder", 20), ("caltech101", 8)):
            m = json.loads((results / model / ds / "metrics.json").read_text())
            assert m["n_questions"] == n
            fingerprints.add((ds, m["question_set"]["fingerprint"]))
    assert len(fingerprints) == 2  # both models answered the identical frozen questions

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (
        again.returncode == 0 and "0 to run" in again.stdout and "nothing to submit" in again.stdout
    )

    out = tmp_path / "report" / "tiny_eval.html"
    rep = subprocess.run(
        [sys.executable, "-m", "llava_ablate.cli", "report", str(results), "--baseline",
         "tiny_clip", "--out", str(out), "--bootstrap", "200"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-3000:]
    rows = _read_csv(out.with_suffix(".csv"))
    md = out.with_suffix(".md").read_text()
    # The CLIP baseline is a zero-shot row, named so (first, as in the paper's table).
    for model, label in (("tiny_clip", "tiny_clip zero-shot"), ("tiny_llava", "tiny_llava")):
        values = []
        for ds in ("image_folder", "caltech101"):
            acc = json.loads((results / model / ds / "metrics.json").read_text())
            acc = acc["scorers"]["likelihood"]["accuracy"]
            row = rows[(label, ds)]
            assert (float(row["accuracy"]), float(row["ci_low"]), float(row["ci_high"]),
                    int(row["n"])) == (acc["value"], acc["ci_low"], acc["ci_high"], acc["n"])  # fmt: skip
            assert f"{100 * acc['value']:.1f} [{100 * acc['ci_low']:.1f}, " in md
            values.append(acc["value"])
        assert float(rows[(label, "average")]["accuracy"]) == pytest.approx(np.mean(values))
    for ds, fp in fingerprints:
        assert f"{ds}: {fp} (all 2 rows)" in md
    assert "**tiny_clip zero-shot** (baseline)" in md


@pytest.mark.slow
def test_eval_grid_runs_without_slurm_and_resumes(cache_dir, tmp_path):
    """The same grid with Hydra's basic launcher (no scheduler), each dataset split into 2
    shards: the arrays (shards, then their merge) run one after the other; a re-launch after
    removing one dataset's metrics re-scores nothing that is done. ~2 min on 2 busy cores."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    models = _tiny_models(cache_dir, tmp_path / "models")
    data = _digits_layouts(tmp_path / "data")
    grid = _eval_grid_file(tmp_path, models, data, "[hydra/launcher=basic]", shards=2)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llava_ablate.launch", str(grid), "--runs-root", str(runs)]
    env = _env(cache_dir)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 evaluation jobs, 4 to run in 4 Slurm arrays" in proc.stdout
    assert "running evaluate/tiny_llava/random: image_folder, caltech101 x 2 shards" in proc.stdout
    assert "running evaluate/tiny_llava/random: image_folder, caltech101 (merge)" in proc.stdout
    done = runs / "tiny_eval" / "random" / "tiny_llava" / "caltech101"
    preds = (done / "predictions.jsonl").read_text()
    (done / "metrics.json").unlink()  # as if the job had stopped after scoring
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 evaluation jobs, 1 to run in 2 Slurm arrays" in again.stdout
    assert (done / "predictions.jsonl").read_text() == preds  # resumed: nothing re-scored
    assert (done / "metrics.json").exists()


def test_sharded_evaluation_merges_exactly_without_loading_the_model(cache_dir, tmp_path,
                                                                    monkeypatch, world_of_one):  # fmt: skip
    """Two array tasks (shard.index=0,1 of 2) then the merge (shard.count=1): the same metrics
    and predictions as one job; the merge finds every question predicted and loads no model.
    Called in-process inside a caller's process group, the evaluation leaves that group alone
    (it only leaves a group it joined itself)."""
    import torch.distributed as dist

    ours = not dist.is_initialized()  # an earlier test's group may still be up: as good
    if ours:
        dist.init_process_group("gloo")
    from llava_ablate.config import compose_config
    from llava_ablate.eval import run as eval_run

    llava = _tiny_llava(cache_dir, tmp_path / "models")
    data = _digits_layouts(tmp_path / "data")

    def evaluate(out: str, *extra: str) -> None:
        overrides = [f"model.path={llava}", "model.name=tiny", f"out_dir={out}",
                     f"paths.data_root={data}", "eval/datasets=[image_folder]",
                     f"eval.questions.dir={tmp_path / 'questions'}", "eval.stats.bootstrap=200",
                     "eval.scoring.scorers=[likelihood,name_likelihood]", *extra]  # fmt: skip
        cfg = compose_config(overrides, "evaluate")
        from omegaconf import OmegaConf

        eval_run.run_evaluation(OmegaConf.to_object(cfg))

    evaluate(str(tmp_path / "one"))
    sharded = tmp_path / "sharded"
    evaluate(str(sharded), "shard.index=0", "shard.count=2")
    evaluate(str(sharded), "shard.index=1", "shard.count=2")
    ds = sharded / "image_folder"
    assert not (ds / "metrics.json").exists()  # a shard writes predictions only
    assert sorted(p.name for p in ds.glob("predictions.*")) == [
        "predictions.rank0.shard0.jsonl", "predictions.rank0.shard1.jsonl"]  # fmt: skip

    def no_model(*_):
        raise AssertionError("the merge must not load the model")

    monkeypatch.setattr(eval_run, "load_model", no_model)
    evaluate(str(sharded))
    assert dist.is_initialized()  # the caller's group survived four evaluations
    if ours:
        dist.destroy_process_group()
    one = json.loads((tmp_path / "one" / "image_folder" / "metrics.json").read_text())
    merged = json.loads((ds / "metrics.json").read_text())
    assert merged["scorers"] == one["scorers"]
    assert merged["question_set"] == one["question_set"] and merged["n_scored"] == 20

    def predicted(path: Path) -> list:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [(r["qid"], r["scorer"], r["pred"], r["correct"]) for r in rows]

    assert predicted(ds / "predictions.jsonl") == predicted(
        tmp_path / "one" / "image_folder" / "predictions.jsonl"
    )
    assert not list(ds.glob("predictions.rank*"))  # merged into predictions.jsonl
