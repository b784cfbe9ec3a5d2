"""The image-text-to-text families the evaluator supports, one adapter each (see base.py).

A new family is one file here with a `Family` subclass, one entry in FAMILIES, and one row in
tests/test_eval_families.py's matrix.
"""

from __future__ import annotations

from llava_ablate.eval.families.base import Family
from llava_ablate.eval.families.gemma3 import Gemma3
from llava_ablate.eval.families.idefics3 import Idefics3
from llava_ablate.eval.families.internvl import InternVL
from llava_ablate.eval.families.llava import Llava
from llava_ablate.eval.families.llava_next import LlavaNext
from llava_ablate.eval.families.llava_onevision import LlavaOnevision
from llava_ablate.eval.families.mistral3 import Mistral3
from llava_ablate.eval.families.qwen_vl import QwenVL

FAMILIES: dict[str, Family] = {
    model_type: family
    for family in (
        Llava(),
        LlavaNext(),
        LlavaOnevision(),
        QwenVL(),
        InternVL(),
        Idefics3(),
        Gemma3(),
        Mistral3(),
    )  # fmt: skip
    for model_type in family.model_types
}


def supported() -> list[str]:
    return sorted(FAMILIES)


def family_for(model_type: str, where: str = "the model") -> Family:
    """The adapter of `model_type` (a config's `model_type`), or a ValueError naming it and the
    supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where} is a {model_type!r} model, a family the evaluator does not support; "
            f"supported: {', '.join(supported())} (add one in llava_ablate/eval/families/)"
        )
    return FAMILIES[model_type]


__all__ = ["FAMILIES", "Family", "family_for", "supported"]
