"""Grid expansion (dedup, chaining), submission units, and the dry-run plan of a 2x2x2 grid:
exact parameter counts, ZeRO memory accounting, steps, and the printed table."""

from __future__ import annotations

import math

import pytest
import yaml

from llava_ablate.config import ConfigError
from llava_ablate.data.builtin import prepare_builtin
from llava_ablate.launch.__main__ import main as launch_main
from llava_ablate.launch.estimate import GIB, train_flops
from llava_ablate.launch.grid import expand, load_grid
from llava_ablate.launch.plan import check_identities, compose_job, format_plan, plan_grid
from llava_ablate.launch.units import make_units, unit_overrides

from conftest import ROOT, build_tiny

GRID_2X2X2 = """
name: g222
description: three axes of two
axes:
  llm: [tiny_llama, tiny_qwen2]
  vision: [tiny_clip, tiny_siglip]
  deepspeed: [zero2, zero3]
common: [+experiment=tiny_finetune, recipe.init_from=null, recipe.global_batch_size=32]
launcher: [hydra/launcher=slurm, hydra.launcher.tasks_per_node=4, hydra.launcher.gpus_per_node=4,
           hydra.launcher.partition=gpu, hydra.launcher.account=lab]
gpu: a100-80gb
"""

CHAIN = """
name: chain
axes:
  llm: [tiny_llama, tiny_qwen2]
  data: [toy_instruct, toy_captions]
common: [vision=tiny_clip]
stages:
  - {name: align, vary: [llm], overrides: [+experiment=tiny_align]}
  - {name: finetune, after: align, overrides: [+experiment=tiny_finetune]}
"""


@pytest.fixture
def grid_file(tmp_path):
    def write(text: str, name: str = "grid.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_two_stage_grid_dedups_stage1_and_chains_each_stage2_to_its_own(grid_file, tmp_path):
    grid = load_grid(grid_file(CHAIN), runs_root=str(tmp_path / "runs"))
    jobs = expand(grid)
    align = [j for j in jobs if j.stage == "align"]
    fine = [j for j in jobs if j.stage == "finetune"]
    assert [j.name for j in align] == ["llm=tiny_llama", "llm=tiny_qwen2"]
    assert len(fine) == 4
    for j in fine:
        assert j.parent.axes["llm"] == j.axes["llm"]
        assert f'recipe.init_from="{j.parent.run_dir}/export"' in j.overrides
        assert j.run_dir == tmp_path / "runs/chain/finetune" / j.name
    units = make_units(jobs)
    assert [(u.stage, len(u.jobs)) for u in units] == [("align", 1), ("align", 1),
                                                        ("finetune", 2), ("finetune", 2)]  # fmt: skip
    # One multirun per stage-2 group, sweeping data; run dir and W&B name from Hydra's choices.
    ov = unit_overrides(units[2], grid, tmp_path / "sweep")
    assert "data=toy_captions,toy_instruct" in ov and "llm=tiny_llama" in ov
    assert any("llm=${hydra:runtime.choices.llm},data=${hydra:runtime.choices.data}" in o
               and o.startswith("train.run_dir=") for o in ov)  # fmt: skip
    # A finished stage-1 job is not submitted again, and its children need no dependency.
    (align[0].run_dir / "export").mkdir(parents=True)
    (align[0].run_dir / "export/COMPLETE").touch()
    check_identities(grid, jobs, [])  # "finished" only for a run of the config composed now
    assert [u.jobs[0].name for u in make_units(jobs)][0] == "llm=tiny_qwen2"


def test_grid_errors_name_the_key(grid_file):
    with pytest.raises(ConfigError, match="no grid named 'nope'.*tiny_2x2"):
        load_grid("nope")
    with pytest.raises(ConfigError, match=r"stages\[0\].vary names 'gpu'"):
        load_grid(grid_file("axes: {llm: [a]}\nstages: [{name: s, vary: [gpu]}]\n"))
    with pytest.raises(ConfigError, match="after='x' is not an earlier stage"):
        load_grid(grid_file("axes: {llm: [a]}\nstages: [{name: s, after: x}]\n"))


def test_dry_run_plan_of_a_2x2x2_grid(grid_file, cache_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LLAVA_CACHE_DIR", str(cache_dir))
    grid = load_grid(grid_file(GRID_2X2X2), runs_root=str(tmp_path / "runs"))
    first = compose_job(expand(grid)[0], grid, [])[0]
    prepare_builtin(first.data, first.train.seed)  # the toy shards + manifests, as train.py does
    rows = plan_grid(grid)
    assert len(rows) == 8
    assert [r.job.name for r in rows][:2] == [
        "llm=tiny_llama,vision=tiny_clip,deepspeed=zero2",
        "llm=tiny_llama,vision=tiny_clip,deepspeed=zero3",
    ]
    for r in rows:
        assert r.status == "new" and r.steps == 20  # tiny_finetune's max_steps
        assert (r.resources.world, r.resources.partition, r.resources.account) == (4, "gpu", "lab")
        assert (r.micro_batch, r.grad_accum) == (4, 2)  # global 32 = 4 micro x 2 accum x 4 ranks
    # Parameter counts are exact: the real model, built as train.py builds it.
    real = build_tiny(cache_dir, "tiny_siglip", "tiny_qwen2").model
    row = next(r for r in rows if r.job.name.startswith("llm=tiny_qwen2,vision=tiny_siglip"))
    assert row.size.params == sum(p.numel() for p in real.parameters())
    assert row.size.trainable["vision"] == 0  # tiny_finetune freezes the tower
    # ZeRO accounting, bf16 on the assumed GPU: 2 B weights, 2 B grads, 12 B Adam per param.
    z2 = next(r for r in rows if r.job.name == "llm=tiny_qwen2,vision=tiny_siglip,deepspeed=zero2")
    z3 = next(r for r in rows if r.job.name == "llm=tiny_qwen2,vision=tiny_siglip,deepspeed=zero3")
    n, t, world = z2.size.params, z2.size.trainable_params, 4
    assert z2.memory.weights == n * 2
    assert z2.memory.gradients == t * 2 / world and z2.memory.optimizer == t * 12 / world
    layer = 2 * z3.size.total["llm"] / z3.size.llm_layers * 2
    assert z3.memory.weights == pytest.approx(n * 2 / world + layer)
    assert z3.memory.activations == z2.memory.activations and z3.memory.overhead == GIB
    # Tokens from the manifests; GPU-hours = training FLOPs / (A100 peak x MFU).
    assert z2.data.samples and z2.tokens == pytest.approx(20 * 32 * z2.data.tokens_per_sample)
    flops = train_flops(z2.size, 20 * 32, z2.data.tokens_per_sample, z2.data.images_per_sample,
                        False)  # fmt: skip
    assert z2.gpu_hours == pytest.approx(flops / (312e12 * 0.4) / 3600)
    assert 0 < z2.data.longest <= 128  # the memory is sized for the longest real sample

    text = format_plan(grid, rows)
    assert "grid g222: 8 jobs, 8 to run, 0 finished -- three axes of two" in text
    for r in rows:
        assert r.job.name in text
    assert "partition=gpu account=lab" in text and "GPU-hours to run: " in text
    assert "1x4 (4 GPU)" in text and "4x2x4" in text

    bad = grid_file(GRID_2X2X2.replace(", recipe.global_batch_size=32", ""), "bad.yaml")
    with pytest.raises(
        ConfigError, match="job llm=tiny_llama.*global_batch_size=8 is not divisible"
    ):
        plan_grid(load_grid(bad))
    assert launch_main([grid_file(GRID_2X2X2), "--dry-run", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("deepspeed=zero3") == 4 and "submitted" not in out


def test_model_states_agree_with_deepspeeds_estimators_up_to_fp32_gradients():
    # LLaVA-1.5-7B (Vicuna-7B + CLIP-L/336) fully fine-tuned in bf16 on 8 ranks: where
    # DeepSpeed's estimators apply, they add one term to ours, an fp32 gradient partition.
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from llava_ablate.launch.estimate import ModelSize, memory_per_rank

    total = {"vision": 303_507_456, "projector": 20_979_712, "llm": 6_738_415_616}
    size = ModelSize(total=total, trainable=dict(total), llm_hidden=4096, llm_layers=32,
                     vocab=32000, vision_hidden=1024, vision_layers=24, image_tokens=576)  # fmt: skip
    n, world = size.params, 8

    def ours(stage: int) -> float:
        m = memory_per_rank(size, zero_stage=stage, world=world, precision="bf16", micro_batch=1,
                            seq_len=2048, gradient_checkpointing=True)  # fmt: skip
        return m.weights + m.gradients + m.optimizer

    _, zero2 = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(
        n, total["llm"] // 32, num_gpus_per_node=world, cpu_offload=False, cpu_offload_params=False
    )
    assert zero2 - ours(2) == pytest.approx(4 * n / world, abs=1)
    assert zero3 - ours(3) == pytest.approx(2 * n / world, abs=8)

    # Stage 1 trains the projector only: DeepSpeed's estimate (every parameter trains) is
    # about twice ours per rank, so the plan keeps its own accounting.
    frozen = ModelSize(
        **{**size.__dict__, "trainable": {"vision": 0, "projector": total["projector"], "llm": 0}}
    )
    m = memory_per_rank(frozen, zero_stage=2, world=world, precision="bf16", micro_batch=1,
                        seq_len=2048, gradient_checkpointing=True)  # fmt: skip
    assert m.weights + m.gradients + m.optimizer < 0.55 * zero2


def test_plan_estimates_the_paper_grid_before_the_build(tmp_path):
    """llm_x_data with no shards built: steps, tokens and GPU-hours from the mixtures' declared
    sizes (data.sizes), marked as estimates; SI-3.2M flagged for its unreleased sources; memory
    at the typical and at the maximum length."""
    grid = load_grid("llm_x_data", runs_root=str(tmp_path / "runs"))
    rows = plan_grid(grid, [f"paths.shards_root={tmp_path / 'no_shards'}"])
    by = {(r.job.stage, r.job.name): r for r in rows}
    align = by[("align", "llm=vicuna7b")]
    assert align.data.estimated and not align.data.lower_bound
    assert align.data.samples == 558_128 and align.steps == 558_128 // 256
    assert align.typical_len == 576 + 16 and align.max_len == 2048
    # Published LLaVA-1.5-7B times on 8 A100s (docs: pretrain ~3.5 h, finetune ~10 h), in
    # GPU-hours: the estimate from declared sizes lands within a third of them.
    assert 28 / 1.35 < align.gpu_hours < 28 * 1.35
    sft = by[("finetune", "llm=vicuna7b,data=llava665k")]
    assert 80 / 1.35 < sft.gpu_hours < 80 * 1.35
    # Qwen2's 152k-vocab logits: the loss keeps the LM head at the supervised positions only
    # (train/loss.py). A 2048-token stage-1 sample supervises at most its 1,472 text tokens
    # (576 are image placeholders), a typical one its ~16 caption tokens: the stage-1 job fits
    # an 80 GB GPU at both lengths (with every position's logits it needed 91.2 GiB at 2048).
    qwen = by[("align", "llm=qwen2")]
    assert qwen.fits and qwen.fits_typical
    assert qwen.memory.total < 70 * GIB
    assert qwen.memory_typical.activations < qwen.memory.activations / 3
    si = by[("finetune", "llm=qwen2,data=si32m")]
    assert si.data.unreleased == ["llava_wild_4v_39k", "llava_wild_4v_12k"]
    assert si.data.lower_bound and si.steps > 2_000_000 // 128  # sized sources alone: > 2M
    # Each sized source after its sampling strategy (first:N% keeps ceil(N% of the rows)).
    recipe = yaml.safe_load((ROOT / "data_recipes/si32m.yaml").read_text())
    kept = 0
    for src in recipe["sources"]:
        if src["name"] in recipe["sizes"]:
            n, how = recipe["sizes"][src["name"]]["samples"], src.get("sampling", "all")
            kept += n if how == "all" else math.ceil(n * float(how[6:-1]) / 100)
    assert si.data.samples == kept
    text = format_plan(grid, rows)
    assert "GPU-hours to run: unknown" not in text and "GPU-hours to run: >=" in text
    assert f"~{align.steps:,}" in text and f">={si.steps:,}" in text
    assert "! #6 llm=qwen2,data=si32m: its mixture has unreleased sources" in text
    assert "#4 typical ~   592 tokens:" in text and "#4 max      2,048 tokens:" in text
    assert "will not fit" not in text


def test_logits_are_counted_at_the_supervised_tokens_only():
    """The plan models the loss of train/loss.py: 16-bit logits (and their gradient) at the
    supervised positions plus one fp32 chunk, not every position's logits."""
    from llava_ablate.launch.estimate import (
        DataSize,
        ModelSize,
        memory_per_rank,
        supervised_per_sample,
    )
    from llava_ablate.train.loss import LOSS_CHUNK_TOKENS

    total = {"vision": 303_507_456, "projector": 20_979_712, "llm": 7_615_616_512}
    size = ModelSize(total=total, trainable={"vision": 0, "projector": total["projector"],
                     "llm": 0}, llm_hidden=3584, llm_layers=28, vocab=152_064,
                     vision_hidden=1024, vision_layers=24, image_tokens=576)  # fmt: skip
    captions = DataSize(558_128, 592.0, 1.0, "declared")  # LCS-558K: every sample has an image
    chats = DataSize(665_298, 811.0, 0.939, "declared")  # LLaVA-665K: some text-only
    assert supervised_per_sample(size, captions, 592) == 16  # the caption
    assert supervised_per_sample(size, captions, 2048) == 2048 - 576  # all text beside the image
    assert supervised_per_sample(size, chats, 2048) == 2048  # a text-only sample, all supervised
    assert supervised_per_sample(size, DataSize(None, None, None, "?"), 2048) is None

    kw = dict(zero_stage=2, world=8, precision="bf16", micro_batch=32, seq_len=592,
              gradient_checkpointing=False)  # fmt: skip
    every = memory_per_rank(size, **kw).activations
    caption = memory_per_rank(size, **kw, supervised=16).activations
    n = 32 * 16
    expected = n * 152_064 * 4 + min(n, LOSS_CHUNK_TOKENS) * 152_064 * 12
    every_logits = 32 * 592 * 152_064 * 4 + LOSS_CHUNK_TOKENS * 152_064 * 12
    assert every - caption == pytest.approx(every_logits - expected)
