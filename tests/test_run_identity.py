"""Run identity: every run directory is named by its axes plus a hash of the result-affecting
config, so a grid over any key never collides, and a run directory refuses a different config."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose_config

AXES_NAME = "qwen2-clip_l14_336-mlp2x_gelu-si32m-finetune"


def _run_dir(overrides: list[str]) -> Path:
    from llava_ablate.config import to_object

    return Path(to_object(compose_config(["llm=qwen2", "data=si32m", *overrides])).train.run_dir)


def test_lr_and_seed_overrides_get_distinct_run_dirs():
    dirs = [
        _run_dir([]),
        _run_dir(["recipe.lr.llm=1e-4"]),
        _run_dir(["train.seed=7"]),
        _run_dir(["recipe.lr.llm=1e-4", "train.seed=7"]),
    ]
    assert len(set(dirs)) == 4, dirs
    for d in dirs:  # readable axes, then an 8-hex hash
        assert d.parent == Path("runs")
        assert d.name.startswith(AXES_NAME + "-") and len(d.name) == len(AXES_NAME) + 9
    assert _run_dir(["train.seed=7"]) == dirs[2]  # the same command names the same run


def test_excluded_keys_do_not_change_the_hash_and_included_ones_do():
    from llava_ablate.run_identity import EXCLUDED

    base_cfg = compose_config(["+experiment=tiny_align"])

    def run_dir(key: str, value) -> Path:
        cfg = copy.deepcopy(base_cfg)
        OmegaConf.update(cfg, key, value, force_add=True)  # force: data.sizes.<new source>
        return Path(cfg.train.run_dir)  # resolved through ${run_hash:}

    base = Path(base_cfg.train.run_dir)
    for key, value in [
        ("train.log_every", 1),
        ("train.save_every", 3),
        ("train.keep_checkpoints", 9),
        ("train.dist_timeout_s", 60),
        ("train.nan_skip_limit", 4),
        ("train.gradient_checkpointing", True),
        ("data.max_bad_fraction", 0.5),
        ("data.build_workers", 8),
        ("data.sizes", {"toy": {"samples": 5, "text_tokens": 9.0}}),  # only plan reads it
        ("wandb.enabled", False),
        ("wandb.name", "other"),
        ("eval.hook.every_steps", 5),
        ("eval.scoring.batch_size", 1),
        ("eval.protocol.rotations", 3),  # evaluate.py's sweep: the hook never runs it
        ("eval.scoring.open_prompt", "Name it."),
        ("paths.data_root", "/elsewhere"),  # moves the sources too: hashed relative to it
        ("train.allow_config_change", ["recipe.max_steps"]),
    ]:
        assert any(key == e or key.startswith(e + ".") for e in EXCLUDED), key
        assert run_dir(key, value) == base, key
    assert run_dir("train.runs_root", "/scratch/runs") == Path("/scratch/runs") / base.name
    for key, value in [("data.num_workers", 4), ("recipe.max_steps", 5),
                       ("train.attn_implementation", "eager"), ("recipe.lr.llm", 1e-4),
                       ("eval.questions.num_options", 4),
                       ("eval.questions.image_encoder", "clip:x")]:  # fmt: skip
        assert run_dir(key, value).name != base.name, key
    zero3 = compose_config(["+experiment=tiny_align", "deepspeed=zero3"])
    assert Path(zero3.train.run_dir).name != base.name  # a group option is an axis too


def test_init_from_finds_the_hashed_stage1_run(tmp_path):
    """Presets name their stage-1 parent by axes; the parent's directory carries a hash."""
    from llava_ablate.config import ConfigError, to_object

    def stage2():
        return to_object(
            compose_config(["+experiment=tiny_finetune", f"train.runs_root={tmp_path}"])
        )

    prefix = "tiny_llama-tiny_clip-mlp2x_gelu-toy_captions-align"
    assert stage2().recipe.init_from == f"{tmp_path}/{prefix}/export"  # nothing trained yet
    first = tmp_path / f"{prefix}-0123abcd"
    (first / "export").mkdir(parents=True)
    assert stage2().recipe.init_from == f"{tmp_path}/{prefix}/export"  # unfinished: not used
    (first / "export/COMPLETE").touch()
    s2 = stage2()
    assert s2.recipe.init_from == f"{first}/export"
    (tmp_path / f"{prefix}-4567cdef/export").mkdir(parents=True)
    (tmp_path / f"{prefix}-4567cdef/export/COMPLETE").touch()
    with pytest.raises(Exception, match="recipe.init_from=") as e:
        stage2()
    assert isinstance(e.value, ConfigError) or "0123abcd" in str(e.value)


def test_rerun_with_a_different_config_into_the_same_run_dir_is_refused(tmp_path):
    from llava_ablate.run_identity import RunConfigMismatch, check_run_identity, record_run_identity

    run = tmp_path / "run"
    first = compose_config(["+experiment=tiny_align", f"train.run_dir={run}"])
    ident = check_run_identity(first, run, world_size=2)
    record_run_identity(first, run, ident)
    assert (run / "config.yaml").exists()
    recorded = json.loads((run / "run_identity.json").read_text())
    assert recorded["hash"] == ident.config_hash and recorded["world_size"] == 2
    assert check_run_identity(first, run, world_size=2).config_hash == ident.config_hash

    changed = ["recipe.lr.projector=1e-4", "train.seed=7", "train.log_every=1"]
    second = compose_config(["+experiment=tiny_align", f"train.run_dir={run}", *changed])
    with pytest.raises(RunConfigMismatch) as e:
        check_run_identity(second, run, world_size=2)
    msg = str(e.value)
    assert "recipe.lr.projector: 0.001 -> 0.0001" in msg and "train.seed: 42 -> 7" in msg
    assert "log_every" not in msg  # excluded: not a difference
    assert msg.splitlines()[-1].startswith("To continue")  # the useful line last
    with pytest.raises(RunConfigMismatch, match="world_size: 2 -> 4"):
        check_run_identity(first, run, world_size=4)

    # A deliberate change, allowed by name: continues, and the change is recorded.
    allow = "train.allow_config_change=[recipe.lr.projector,train.seed]"
    third = compose_config(["+experiment=tiny_align", f"train.run_dir={run}", *changed, allow])
    with pytest.raises(RunConfigMismatch, match="train.seed"):  # allowing one key is not enough
        check_run_identity(
            compose_config(["+experiment=tiny_align", f"train.run_dir={run}", *changed,
                            "train.allow_config_change=[recipe.lr.projector]"]),
            run, world_size=2)  # fmt: skip
    ident3 = check_run_identity(third, run, world_size=2)
    record_run_identity(third, run, ident3)
    rec = json.loads((run / "run_identity.json").read_text())
    assert rec["hash"] == ident.config_hash  # the run keeps its identity (dir, W&B id)
    assert rec["config_hash"] == ident3.config_hash != ident.config_hash
    assert rec["changes"][0]["keys"] == ["recipe.lr.projector", "train.seed"]
    assert "seed: 7" in (run / "config.yaml").read_text()
    assert check_run_identity(third, run, world_size=2).wandb_id == ident.wandb_id


def test_finished_only_when_the_recorded_config_matches(tmp_path, monkeypatch):
    """run_training says "nothing to do" for a finished run only when its config matches."""
    import llava_ablate.train.run as run_mod
    from llava_ablate.base.distributed import DistInfo
    from llava_ablate.run_identity import RunConfigMismatch, check_run_identity, record_run_identity

    # Only the identity decision is under test here, so no process group is started;
    # test_train_e2e's re-run test takes the real torchrun path to "nothing to do".
    monkeypatch.setattr(run_mod, "init_distributed", lambda *_: DistInfo(0, 0, 1))
    monkeypatch.setattr(run_mod, "shutdown_distributed", lambda: None)
    run = tmp_path / "run"
    done = compose_config(["+experiment=tiny_align", f"train.run_dir={run}"])
    record_run_identity(done, run, check_run_identity(done, run, world_size=1))
    (run / "export").mkdir()
    (run / "export/COMPLETE").touch()
    assert run_mod.run_training(done) == run / "export"  # finished, nothing to do
    other = compose_config(
        ["+experiment=tiny_align", f"train.run_dir={run}", "recipe.max_steps=40"]
    )
    with pytest.raises(RunConfigMismatch, match="recipe.max_steps: 20 -> 40"):
        run_mod.run_training(other)


def test_older_run_dirs_without_a_record_are_compared_through_config_yaml(tmp_path):
    from omegaconf import OmegaConf

    from llava_ablate.run_identity import RunConfigMismatch, check_run_identity

    run = tmp_path / "run"
    run.mkdir()
    old = compose_config(["+experiment=tiny_align", f"train.run_dir={run}"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(old, resolve=True))  # what main wrote
    assert check_run_identity(old, run, world_size=1)
    new = compose_config(["+experiment=tiny_align", f"train.run_dir={run}", "train.seed=3"])
    with pytest.raises(RunConfigMismatch, match="train.seed: 42 -> 3"):
        check_run_identity(new, run, world_size=1)


APP = """
import sys
sys.path.insert(0, {root!r})
import hydra
from hydra.core.hydra_config import HydraConfig
from llava_ablate.config import register_configs

register_configs()

@hydra.main(config_path={conf!r}, config_name="config", version_base="1.3")
def main(cfg):
    print("RUN_DIR", cfg.train.run_dir, HydraConfig.get().runtime.output_dir, flush=True)

main()
"""


def test_seed_multirun_gives_three_run_dirs_and_hydra_run_dir_follows(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP.format(root=str(ROOT), conf=str(ROOT / "conf"))))
    common = ["llm=tiny_llama", "vision=tiny_clip", f"train.runs_root={tmp_path}/runs"]

    def run(args):
        out = subprocess.run([sys.executable, str(app), *args], cwd=tmp_path, text=True,
                             capture_output=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("RUN_DIR")]

    multi = run(["-m", "train.seed=1,2,3", f"hydra.sweep.dir={tmp_path}/sweep", *common])
    assert len(multi) == 3 and len({d for d, _ in multi}) == 3, multi
    (single,) = run(["train.seed=2", *common])
    assert single[0] == multi[1][0]  # the same config names the same run, single or multirun
    assert Path(single[1]).resolve() == Path(single[0]).resolve()  # Hydra's run dir is the run's


# The run directory (readable axes + config hash) of every shipped experiment and of the
# README's variants, as every earlier version named it: a refactor of the configs or of the
# architecture code must not rename a finished run (it would be trained again).
SHIPPED_RUN_NAMES = {
    "demo_stage1": "tiny_llama-mini_clip-mlp2x_gelu-demo_captions-demo_align-2faf5635",
    "demo_stage2": "tiny_llama-mini_clip-mlp2x_gelu-demo_base-demo_finetune-f82c1e40",
    "llava15_7b_stage1": "vicuna7b-clip_l14_336-mlp2x_gelu-llava558k-align-cdb90fbf",
    "llava15_7b_stage2": "vicuna7b-clip_l14_336-mlp2x_gelu-llava665k-finetune-6f0353d4",
    "onevision_si_7b": "llava_onevision-qwen2-siglip_so400m-mlp2x_gelu-si32m-finetune_full-23a02a12",
    "tiny_align": "tiny_llama-tiny_clip-mlp2x_gelu-toy_captions-align-7f5c7571",
    "tiny_finetune": "tiny_llama-tiny_clip-mlp2x_gelu-toy_instruct-finetune-374677f6",
    "llm=qwen2 data=si32m": "qwen2-clip_l14_336-mlp2x_gelu-si32m-finetune-b79a7b11",
    "arch=llava_onevision vision=siglip_so400m llm=qwen2 data=si32m": "llava_onevision-qwen2-siglip_so400m-mlp2x_gelu-si32m-finetune-e7f3c4f7",
}


@pytest.mark.parametrize("name", sorted(SHIPPED_RUN_NAMES))
def test_shipped_configs_keep_their_run_identity(name):
    overrides = name.split() if "=" in name else [f"+experiment={name}"]
    cfg = compose_config([*overrides, "train.runs_root=runs"])
    assert Path(str(cfg.train.run_dir)).name == SHIPPED_RUN_NAMES[name]
