"""The training architectures (`arch.type`), one adapter each (see base.py).

A new architecture is one file here with a `TrainingArch` subclass, one entry in ARCHS, a
conf/arch/<name>.yaml, and one row in tests/test_train_archs.py.
"""

from __future__ import annotations

from llava_ablate.model.archs.base import ProcessorParts, TrainingArch
from llava_ablate.model.archs.llava import Llava
from llava_ablate.model.archs.llava_onevision import LlavaOnevision, anyres_pinpoints

ARCHS: dict[str, TrainingArch] = {a.type: a for a in (Llava(), LlavaOnevision())}


def arch_for(arch_type: str) -> TrainingArch:
    """The adapter of `arch.type` (validated against ARCHS when the config is read)."""
    return ARCHS[arch_type]


__all__ = ["ARCHS", "ProcessorParts", "TrainingArch", "anyres_pinpoints", "arch_for"]
