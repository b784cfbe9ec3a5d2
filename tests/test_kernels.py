"""recipe.kernels=liger (llava_ablate/model/kernels.py): the wiring into liger-kernel and the
errors where it cannot run. liger-kernel needs triton and a CUDA GPU, neither of which this
test machine has: the calls into liger are checked against a recording module in its place."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from llava_ablate.config import ConfigError, to_object, validate
from llava_ablate.model.kernels import KernelsUnavailable, apply_kernels
from llava_ablate.run_identity import config_hash, result_config

from conftest import build_tiny, compose_config


@pytest.fixture(scope="module")
def llm(cache_dir):
    return build_tiny(cache_dir, llm="tiny_qwen2").model.model.language_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal; a GPU is visible")
def test_a_cpu_run_with_liger_kernels_fails_clearly(cache_dir):
    from llava_ablate.train.run import build_model

    cfg = to_object(
        compose_config(
            ["vision=tiny_clip", "llm=tiny_qwen2", "recipe.kernels=liger",
             f"paths.cache_dir={cache_dir}"]
        )
    )  # fmt: skip
    with pytest.raises(KernelsUnavailable, match=r"need a CUDA GPU.*set recipe.kernels=none"):
        build_model(cfg, "fp32")


def test_without_liger_installed_the_error_says_how_to_install(llm, monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails, as when absent
    with pytest.raises(KernelsUnavailable, match=r"pip install 'llava-ablate\[liger\]'"):
        apply_kernels(llm, "liger", cuda=True)


def _recording_liger(monkeypatch, families: list[str]) -> list[dict]:
    calls: list[dict] = []
    top = types.ModuleType("liger_kernel")
    tf = types.ModuleType("liger_kernel.transformers")
    patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    patch.MODEL_TYPE_TO_APPLY_LIGER_FN = {f: object() for f in families}
    tf._apply_liger_kernel_to_instance = lambda **kw: calls.append(kw)
    for name, mod in [("liger_kernel", top), ("liger_kernel.transformers", tf),
                      ("liger_kernel.transformers.monkey_patch", patch)]:  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_liger_is_applied_to_the_llm_instance_without_its_loss(llm, monkeypatch):
    calls = _recording_liger(monkeypatch, ["llama", "qwen2"])
    apply_kernels(llm, "liger", cuda=True)
    assert len(calls) == 1 and calls[0].pop("model") is llm
    assert calls[0] == dict(rms_norm=True, rope=True, swiglu=True, cross_entropy=False,
                            fused_linear_cross_entropy=False)  # fmt: skip
    apply_kernels(llm, "none", cuda=True)  # the default touches nothing
    assert len(calls) == 1


def test_an_llm_family_liger_lacks_is_named(llm, monkeypatch):
    _recording_liger(monkeypatch, ["llama", "mistral"])
    with pytest.raises(KernelsUnavailable, match=r"LLM family 'qwen2'.*\['llama', 'mistral'\]"):
        apply_kernels(llm, "liger", cuda=True)


def test_kernels_is_a_checked_choice_hashed_only_when_set():
    with pytest.raises(ConfigError, match=r"recipe.kernels='triton' is not allowed"):
        validate(compose_config(["recipe.kernels=triton"]))
    default, none = compose_config([]), compose_config(["recipe.kernels=none"])
    liger = compose_config(["recipe.kernels=liger"])
    assert "kernels" not in result_config(default)["recipe"]  # the runs before the key: same ids
    assert config_hash(result_config(none)) == config_hash(result_config(default))
    assert config_hash(result_config(liger)) != config_hash(result_config(default))
