"""The training hook: a ZeRO-3 engine on 2 ranks (torchrun) scores exactly what a plain
single-process model scores, with unequal question counts padded per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import eval_fixtures as fx
import pytest
import torch

from llava_ablate.eval.hook import TrainingEvalHook, equal_shares
from llava_ablate.eval_config import DatasetCfg, EvalCfg, HookCfg, ScoringCfg

from conftest import ROOT, _free_port, build_tiny


def hook_for(processor, data: Path, run_dir: Path) -> TrainingEvalHook:
    # 10 digits x 3 = 30 questions, 25 of them scored: 13 + 12 over two ranks.
    cfg = EvalCfg(
        datasets={"digits": DatasetCfg(kind="image_folder", root=str(data))},
        scoring=ScoringCfg(scorers=["likelihood", "name_likelihood"], batch_size=4),
        hook=HookCfg(every_steps=2, at_end=True, max_questions=25),
    )
    return TrainingEvalHook(cfg, processor, run_dir)


def test_equal_shares_pad_the_short_rank():
    shares = [equal_shares(25, 2, r) for r in range(2)]
    assert [len(idx) for idx, _ in shares] == [13, 13]
    assert [real for _, real in shares] == [13, 12]
    assert sorted(i for idx, real in shares for i in idx[:real]) == list(range(25))
    assert equal_shares(1, 4, 3) == ([0], 0)


@pytest.mark.slow
def test_hook_under_zero3_on_two_ranks_matches_plain_model(cache_dir, tmp_path):
    data = fx.digits_folder(tmp_path / "digits", per_class=3)
    torch.manual_seed(0)
    variant = build_tiny(cache_dir)
    variant.model.train()
    plain = hook_for(variant.processor, data, tmp_path / "plain")
    assert plain.maybe_run(variant.model, 1) is None
    expected = plain.maybe_run(variant.model, 2)
    assert variant.model.training
    assert 0 <= expected["eval/digits/accuracy"] <= 1
    assert (tmp_path / "plain" / "eval" / "step_2" / "digits" / "metrics.json").exists()

    out = tmp_path / "zero3"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "eval_hook_worker.py"),
        str(cache_dir),
        str(data),
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    got = json.loads((out / "result.json").read_text())
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k] == pytest.approx(expected[k], abs=1e-9), k
    assert {"eval/digits/accuracy", "eval/digits/name_likelihood/accuracy"} <= got.keys()
    assert got["eval/digits/accuracy"] == got["eval/digits/likelihood/accuracy"]

    def preds(path):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return {(r["scorer"], r["qid"]): r["pred"] for r in rows}

    zero3 = preds(out / "eval" / "step_4" / "digits" / "predictions.jsonl")
    assert len(zero3) == 50  # 25 questions x 2 scorers, no padding left over
    assert zero3 == preds(tmp_path / "plain" / "eval" / "step_2" / "digits" / "predictions.jsonl")
