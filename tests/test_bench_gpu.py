"""The GPU bench cannot rot: `python -m bench gpu --smoke` runs its real path on CPU (train.py
under torchrun with DeepSpeed ZeRO-2 per batching mode, the plan's estimate, the eval scorers
against batch-1 generate) and must report every figure; an unsupported batching mode fails
before any run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # 2-core CPU: 77 s with a warm cache (load ~3); 529 s fresh, at load 10-15
def test_gpu_bench_smoke_reports_every_figure(cache_dir, tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "bench", "gpu", "--smoke", "--peak-tflops", "1"]
    cmd += ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    env = {**os.environ, "LLAVA_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["peak_flops"] == 1e12 and r["peak_source"] == "--peak-tflops"
    assert r["zero_stage"] == 2 and r["world"] == 1
    flash = importlib.util.find_spec("flash_attn") is not None
    assert r["attention"]["flash_attention_2"] == ("run" if flash else "not installed")
    if r["device"].startswith("cpu"):  # liger's Triton kernels cannot run: said, not run
        assert r["kernels"] == {"none": "run", "liger": "needs a CUDA GPU"}
    plain = [row for row in r["training"] if row["attn"] == "sdpa" and row["kernels"] == "none"]
    assert [row["batching"] for row in plain] == ["group", "pack"]
    for row in r["training"]:
        assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0
        assert 0 <= row["data_wait_frac"] <= 1
        assert row["peak_mem_gib"] > 0 and row["estimate_mem_gib"] > 0
        # MFU and HFU as the run logged them against the stated peak (1 TFLOP/s).
        assert 0 < row["mfu"] <= row["hfu"]
        assert row["mfu"] == pytest.approx(row["tflops_per_device"])
        assert row["windows_timed"] >= 1
    ratio = r["batching_ratio"]["tiny_llama"]["pack/group"]
    assert ratio > 0
    e = r["eval"]
    assert e["options"] == 26 and e["questions"] == 4
    paths = ["likelihood", "name_likelihood", "generate", "lmms_eval_llava_hf_b1"]
    for path in paths:
        assert e["questions_per_s"][path] > 0 and e["over_batch1_generate"][path] > 0
    assert e["over_batch1_generate"]["lmms_eval_llava_hf_b1"] == pytest.approx(1.0)
    # The printed table carries the same figures.
    for text in ("| tokens/s | TFLOP/s | MFU | HFU |", "pack/group", "x batch-1"):
        assert text in proc.stdout


def test_unsupported_batching_mode_fails_before_any_run(tmp_path, monkeypatch):
    from bench import gpu

    with pytest.raises(SystemExit, match="unknown mode"):
        gpu.check_configs(gpu.SMOKE, [gpu.Case("tiny_llama", "zigzag", "sdpa")], tmp_path)
    # A mode the bench knows but the config refuses.
    monkeypatch.setitem(gpu.BATCHING, "refused", ["data.batching=sometimes"])
    with pytest.raises(SystemExit, match="refused.*--batching refused supported"):
        gpu.check_configs(gpu.SMOKE, [gpu.Case("tiny_llama", "refused", "sdpa")], tmp_path)
