"""bf16 on a CUDA GPU, end to end: the real train.py (torchrun, one rank, DeepSpeed ZeRO-2 on
NCCL) with the evaluation hook, then evaluate.py on the export. On a machine without a GPU these
skip, saying so; bench/gpu_run.sh sets LLAVA_REQUIRE_CUDA=1 on a lent GPU machine, where a
missing GPU fails instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, read_metrics


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        if os.environ.get("LLAVA_REQUIRE_CUDA"):  # set by bench/gpu_run.sh
            pytest.fail("LLAVA_REQUIRE_CUDA is set but torch sees no CUDA GPU")
        pytest.skip("needs a CUDA GPU (bench/gpu_run.sh runs these on a lent one)")
    assert torch.cuda.is_bf16_supported(), f"{torch.cuda.get_device_name()}: no bf16"


def test_bf16_train_with_eval_hook_then_evaluate_the_export(
    cuda, train_launcher, cache_dir, tmp_path
):
    run = tmp_path / "cuda"
    train_launcher(
        [
            "+experiment=tiny_finetune",
            "recipe.init_from=null",
            "train.precision=bf16",
            "deepspeed=zero2",
            "recipe.max_steps=10",
            "train.log_every=1",
            "train.save_every=0",
            "eval/datasets=[mini_classify]",
            "eval.hook.every_steps=5",
            "eval.hook.max_questions=30",
            f"train.run_dir={run}",
        ],
        nproc=1,  # one GPU: NCCL refuses two ranks on one device
    )
    rows = read_metrics(run)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert all(0 < r["loss"] < 20 for r in steps) and steps[-1]["loss"] < steps[0]["loss"]
    assert max(r["peak_mem_gb"] for r in steps) > 0  # torch.cuda.max_memory_allocated
    evals = [r for r in rows if "eval/mini_classify/accuracy" in r]
    assert [r["step"] for r in evals] == [5, 10]

    from transformers import LlavaForConditionalGeneration

    assert LlavaForConditionalGeneration.from_pretrained(run / "export").dtype == torch.bfloat16
    out = tmp_path / "eval"
    cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        f"model.path={run / 'export'}",
        "model.dtype=bf16",
        "eval/datasets=[mini_classify]",
        "eval.scoring.scorers=[likelihood,generate]",
        "eval.scoring.max_new_tokens=4",
        f"eval.questions.dir={tmp_path / 'questions'}",
        f"out_dir={out}",
    ]
    env = {**os.environ, "LLAVA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "mini_classify" / "metrics.json").read_text())
    assert set(metrics["scorers"]) == {"likelihood", "generate"}
    for scorer in metrics["scorers"].values():
        assert 0 <= scorer["accuracy"]["value"] <= 1
