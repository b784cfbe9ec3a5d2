"""Every config group option and experiment composes; typos fail before any work starts."""

from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from llava_ablate.config import (
    CONF_DIR,
    Config,
    ConfigError,
    compose_config,
    register_configs,
    to_object,
    validate,
)

from conftest import ROOT

CONF = CONF_DIR
register_configs()


def _compose(overrides: list[str]):
    return compose_config(overrides)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["arch", "vision", "llm", "projector", "data", "recipe", "deepspeed"]
)
def test_every_group_option_composes_and_validates(group):
    options = _options(group)
    assert len(options) >= 2, f"{group} should offer alternatives"
    for option in options:
        cfg = _compose([f"{group}={option}"])
        obj = to_object(cfg)
        assert isinstance(obj, Config)
        assert OmegaConf.select(cfg, f"{group}.name" if group != "projector" else "projector.type")


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = _compose([f"+experiment={experiment}"])
    obj = to_object(cfg)
    assert obj.experiment == experiment


def test_public_recipes_match_the_papers():
    s1 = to_object(_compose(["+experiment=llava15_7b_stage1"]))
    assert (s1.vision.pretrained, s1.llm.pretrained) == (
        "openai/clip-vit-large-patch14-336",
        "lmsys/vicuna-7b-v1.5",
    )
    assert (s1.recipe.lr.projector, s1.recipe.lr.llm, s1.recipe.global_batch_size) == (
        1e-3,
        None,
        256,
    )
    assert s1.recipe.prompt_format == "plain" and s1.deepspeed.zero_stage == 2
    s2 = to_object(_compose(["+experiment=llava15_7b_stage2"]))
    assert (s2.recipe.lr.llm, s2.recipe.global_batch_size, s2.deepspeed.zero_stage) == (
        2e-5,
        128,
        3,
    )
    assert s2.recipe.init_from.endswith("llava558k-align/export")
    ov = to_object(_compose(["+experiment=onevision_si_7b"]))
    assert ov.llm.pretrained == "Qwen/Qwen2-7B-Instruct" and ov.vision.select_strategy == "full"
    assert ov.recipe.lr.vision == 2e-6 and ov.data.name == "si32m"
    unreleased = [s.path for s in ov.data.sources if not s.released]
    assert len(unreleased) == 2 and len(ov.data.sources) == 90


def test_run_dir_derives_from_the_variant():
    obj = to_object(_compose(["llm=qwen2", "data=si32m"]))
    # axes, then the config hash (tests/test_run_identity.py checks what the hash covers)
    assert re.fullmatch(r"runs/qwen2-clip_l14_336-mlp2x_gelu-si32m-finetune-[0-9a-f]{8}",
                        obj.train.run_dir)  # fmt: skip


def test_unknown_group_option_names_the_choices():
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["llm=qwen3"])
    message = str(e.value)
    assert "llm/qwen3" in message
    assert all(option in message for option in _options("llm")), message


def test_misspelt_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["recipe.lrr=1"])
    assert "lrr" in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize(
    "override,key,choices",
    [
        ("vision.arch=vit", "vision.arch", ["clip", "siglip"]),
        ("train.precision=fp8", "train.precision", ["auto", "bf16", "fp16", "fp32"]),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage", ["0", "1", "2", "3"]),
        ("recipe.overflow=drop", "recipe.overflow", ["truncate", "skip"]),
    ],
)
def test_bad_values_fail_naming_key_and_choices(override, key, choices):
    cfg = _compose([override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        validate(cfg)
    message = str(e.value)
    assert all(choice in message.split("choose")[-1] for choice in choices), message


def test_global_batch_must_divide():
    cfg = _compose(["recipe.global_batch_size=100", "recipe.micro_batch_size=16"])
    with pytest.raises(ConfigError, match="global_batch_size"):
        validate(cfg)


def test_cli_prints_composed_config():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "llm=qwen2", "data=si32m", "--cfg", "job"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pretrained: Qwen/Qwen2-7B-Instruct" in out and "name: si32m" in out
    bad = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "llm=qwen3"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "qwen3" in bad.stderr and "vicuna7b" in bad.stderr
