"""Fault injection for config errors: unknown keys and out-of-range values fail before any work,
naming the key, and a composition error's own message is the last thing printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava_ablate.config import ConfigError, compose_config, register_configs, to_object, validate
from llava_ablate.eval_config import EvaluateConfig, register_eval_configs, validate_evaluate

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def _compose(overrides: list[str], config_name: str = "config"):
    return compose_config(overrides, config_name)


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,key",
    [
        ("+unknown.key=1", "unknown"),
        ("+recipe.not_a_key=1", "recipe.not_a_key"),
        ("+recipe.lr.text=1e-4", "recipe.lr.text"),
        ("+train.seeed=3", "train.seeed"),
        ("+data.sources.0.wieght=2", "data.sources[0].wieght"),
        ("+eval.questions.num_option=4", "eval.questions.num_option"),
        ("+recipe.lora.rank=8", "recipe.lora.rank"),
    ],
)
def test_unknown_key_fails_naming_it(override, key):
    # Hydra's `+` adds a key even to a struct config: the schema check must catch it.
    extra = ["recipe=lora"] if "lora" in override else []
    cfg = _compose([*extra, override])
    with pytest.raises(ConfigError, match=r"unknown config key") as e:
        to_object(cfg)
    assert key in str(e.value)


@pytest.mark.parametrize(
    "override",
    ["+vision.config.hidden_size=64", "+llm.config.rope_theta=1e4", "+deepspeed.extra.foo=1"],
)
def test_free_form_sections_take_any_key(override):
    to_object(_compose([override]))  # HF config overrides and raw DeepSpeed JSON: free-form


def test_unknown_eval_dataset_key_fails_naming_it():
    cfg = _compose(["eval/datasets=[mini_classify]", "+eval.datasets.mini_classify.rooot=x"])
    with pytest.raises(ConfigError, match=r"eval\.datasets\.mini_classify\.rooot"):
        to_object(cfg)


def test_evaluate_unknown_key_fails_naming_it():
    register_eval_configs()
    cfg = _compose(["model.path=x", "+model.foo=1"], "evaluate")
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match=r"model\.foo"):
        validate_evaluate(cfg)
    obj = OmegaConf.to_object(_compose(["model.path=x"], "evaluate"))
    assert isinstance(obj, EvaluateConfig)
    validate_evaluate(obj)


# --- out-of-range values ------------------------------------------------------------------

OUT_OF_RANGE = [
    ("recipe.micro_batch_size=-4", "recipe.micro_batch_size"),
    ("recipe.micro_batch_size=0", "recipe.micro_batch_size"),
    ("recipe.global_batch_size=0", "recipe.global_batch_size"),
    ("recipe.epochs=0", "recipe.epochs"),
    ("recipe.max_steps=0", "recipe.max_steps"),
    ("recipe.max_steps=-5", "recipe.max_steps"),
    ("recipe.warmup_ratio=1.5", "recipe.warmup_ratio"),
    ("recipe.warmup_ratio=-0.1", "recipe.warmup_ratio"),
    ("recipe.min_lr_ratio=2", "recipe.min_lr_ratio"),
    ("recipe.weight_decay=-1", "recipe.weight_decay"),
    ("recipe.grad_clip=-1", "recipe.grad_clip"),
    ("recipe.max_length=0", "recipe.max_length"),
    ("recipe.lr.llm=-1e-5", "recipe.lr.llm"),
    ("recipe.lr.projector=-1", "recipe.lr.projector"),
    ("data.samples_per_shard=0", "data.samples_per_shard"),
    ("data.build_workers=0", "data.build_workers"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.prefetch_factor=0", "data.prefetch_factor"),
    ("data.max_image_side=0", "data.max_image_side"),
    ("data.max_image_side=big", "data.max_image_side"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction"),
    ("data.max_bad_fraction=-0.01", "data.max_bad_fraction"),
    ("data.group_buffer=0", "data.group_buffer"),
    ("data.batching=packed", "data.batching"),
    ("data.sources.0.weight=-1", "data.sources[0].weight"),
    ("train.seed=-1", "train.seed"),
    ("train.log_every=0", "train.log_every"),
    ("train.save_every=-1", "train.save_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.nan_skip_limit=-1", "train.nan_skip_limit"),
    ("train.dist_timeout_s=0", "train.dist_timeout_s"),
    ("wandb.mode=onlin", "wandb.mode"),
    ("vision.feature_layer=abc", "vision.feature_layer"),
    ("eval.scoring.batch_size=0", "eval.scoring.batch_size"),
    ("eval.scoring.max_new_tokens=0", "eval.scoring.max_new_tokens"),
    ("eval.scoring.cyclic_permutations=-1", "eval.scoring.cyclic_permutations"),
    ("eval.questions.hard_pool=-1", "eval.questions.hard_pool"),
    ("eval.stats.bootstrap=0", "eval.stats.bootstrap"),
    ("eval.hook.every_steps=-1", "eval.hook.every_steps"),
    ("eval.hook.max_questions=0", "eval.hook.max_questions"),
    ("eval.hard.q=1.5", "eval.hard.q"),
]


@pytest.mark.parametrize("override,key", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_value_fails_naming_the_key(override, key):
    cfg = _compose([override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(key), str(e.value)


@pytest.mark.parametrize(
    "override",
    ["data.num_workers=auto", "data.max_image_side=null", "data.max_image_side=1152"],
)
def test_the_image_path_settings_accept_their_special_values(override):
    validate(_compose([override]))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["recipe=lora", "recipe.lora.r=0"], "recipe.lora.r"),
        (["recipe=lora", "recipe.lora.alpha=-8"], "recipe.lora.alpha"),
        (["recipe=lora", "recipe.lora.dropout=1"], "recipe.lora.dropout"),
        (["data=demo_extra", "data.sources.0.mcq_fraction=1.5"], "data.sources[0].mcq_fraction"),
        (["data=demo_extra", "data.sources.0.mcq_options=1"], "data.sources[0].mcq_options"),
        (
            ["data=demo_extra", "data.sources.0.mcq_distractors=al"],
            "data.sources[0].mcq_distractors",
        ),
        (["data=demo_extra", "data.sources.0.weight=1"], "data.sources"),
        (
            ["eval/datasets=[mini_classify]", "eval.datasets.mini_classify.per_class=0"],
            "eval.datasets.mini_classify.per_class",
        ),
        (
            ["eval/datasets=[mini_classify]", "eval.datasets.mini_classify.total=-3"],
            "eval.datasets.mini_classify.total",
        ),
        (["+deepspeed.extra.scheduler.type=WarmupLR"], "deepspeed.extra.scheduler"),
    ],
)
def test_out_of_range_in_nested_sections(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(_compose(overrides))
    assert str(e.value).startswith(key), str(e.value)


def test_evaluate_out_of_range_fails_naming_the_key():
    register_eval_configs()
    cfg = _compose(["model.path=x", "eval.scoring.batch_size=-1"], "evaluate")
    with pytest.raises(ConfigError, match=r"^eval\.scoring\.batch_size"):
        validate_evaluate(cfg)
    with pytest.raises(ConfigError, match=r"^model\.image_aspect"):
        validate_evaluate(_compose(["model.path=x", "model.image_aspect=crop"], "evaluate"))


# --- the entry points: fail before any work, the useful line last ---------------------------


def _run(
    script: str, *args: str, full_error: bool = False, tmp: Path
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=120,
    )


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.parametrize(
    "override, named",
    [
        ("+recipe.not_a_key=1", "recipe.not_a_key"),  # an unknown key, even added with `+`
        ("recipe.micro_batch_size=-4", "recipe.micro_batch_size=-4"),  # out of range
        # a previous stage that is not there: no empty run directory left behind
        ("recipe.init_from=/no/such/stage1/export", "recipe.init_from=/no/such/stage1/export"),
    ],
)
def test_train_rejects_a_bad_config_before_any_work(tmp_path, override, named):
    runs = tmp_path / "runs"
    out = _run(
        "train.py",
        "+experiment=tiny_finetune",
        "recipe.init_from=null",
        "recipe.max_steps=1",
        f"train.runs_root={runs}",
        override,
        tmp=tmp_path,
    )
    assert out.returncode != 0
    assert named in _last_line(out.stderr), out.stderr
    assert not runs.exists(), "a run directory was created for a config that cannot run"


def test_composition_error_message_is_the_last_line(tmp_path):
    out = _run("train.py", "llm=qwen3", tmp=tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Could not find 'llm/qwen3'" in lines[-2], out.stderr
    assert "Available options in 'llm'" in lines[-1] and "vicuna7b" in lines[-1], out.stderr
    assert "Config search path" not in out.stderr
    # The full trace (with Hydra's search path) stays one environment variable away.
    full = _run("train.py", "llm=qwen3", full_error=True, tmp=tmp_path)
    assert full.returncode != 0 and "Traceback" in full.stderr
    assert "Config search path" in full.stderr


def test_misspelt_key_message_is_the_last_line(tmp_path):
    out = _run("train.py", "recipe.lrr=1", tmp=tmp_path)
    assert out.returncode != 0
    last = _last_line(out.stderr)
    assert "lrr" in last and "RecipeCfg" in last, out.stderr


def test_evaluate_rejects_an_unknown_key(tmp_path):
    out = _run("evaluate.py", "model.path=x", "+model.foo=1", tmp=tmp_path)
    assert out.returncode != 0
    assert "model.foo" in _last_line(out.stderr), out.stderr


def test_cli_rejects_an_unknown_key(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "llava_ablate.cli", "data", "build", "+data.foo=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode != 0
    assert "data.foo" in _last_line(out.stderr), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "argv, typo, nearest",
    [
        (["train.py"], "recipe.micro_batchsize=4", "recipe.micro_batch_size"),
        (
            ["evaluate.py", "model.path=x"],
            "eval.scoring.max_new_token=4",
            "eval.scoring.max_new_tokens",
        ),
        (
            ["-m", "llava_ablate.cli", "data", "build"],
            "data.samples_pershard=3",
            "data.samples_per_shard",
        ),
        (["train.py"], "recipee.max_steps=3", "recipe"),
    ],
)
def test_a_misspelt_key_without_plus_gets_the_nearest_real_key(tmp_path, argv, typo, nearest):
    """As with `+key=...` (check_known_keys): the README promises the nearest key in both cases."""
    script = [str(ROOT / argv[0])] if argv[0].endswith(".py") else argv[:2]
    rest = argv[1:] if argv[0].endswith(".py") else argv[2:]
    out = subprocess.run(
        [sys.executable, *script, *rest, typo],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert out.returncode != 0
    assert f"(did you mean {nearest}?)" in _last_line(out.stderr), out.stderr
