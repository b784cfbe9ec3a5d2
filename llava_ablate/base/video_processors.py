"""Let image-text-to-text processors be built and loaded where torchvision is not installed.

Processors of video-capable families (LLaVA-OneVision, Qwen2/2.5/3-VL, InternVL, SmolVLM) carry
a video processor, and transformers ties every video processor to torchvision: without it (this
project's CPU machines: the PyPI torchvision breaks beside the CPU torch build) the processor's
class check cannot find `VideoProcessorMixin`, `AutoProcessor.from_pretrained` gets a dummy video
processor that refuses to load, and some video processor modules import torchvision at the top.
Images never touch the video processor. (Mistral 3's Pixtral processor is marked as needing
torchvision for a size helper of the same kind.) `allow_video_processors()` registers each
family's real class through transformers' own `AutoVideoProcessor.register` (importing a module that needs
torchvision against a stand-in that raises on first use, so a video still fails, clearly) and
exposes the mixin the check looks for; with torchvision installed it does nothing, and stock
loading works unchanged.

This file imports nothing of llava_ablate: exports carry a copy (WITHOUT_TORCHVISION) that a
process without the package runs, as their model card says.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types

WITHOUT_TORCHVISION = "without_torchvision.py"  # the copy in an export

# model_type -> (module under transformers.models, class): the video processor of each family.
VIDEO_PROCESSORS = {
    "llava_onevision": (
        "llava_onevision.video_processing_llava_onevision",
        "LlavaOnevisionVideoProcessor",
    ),
    "qwen2_vl": ("qwen2_vl.video_processing_qwen2_vl", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("qwen2_vl.video_processing_qwen2_vl", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("qwen3_vl.video_processing_qwen3_vl", "Qwen3VLVideoProcessor"),
    "internvl": ("internvl.video_processing_internvl", "InternVLVideoProcessor"),
    "smolvlm": ("smolvlm.video_processing_smolvlm", "SmolVLMVideoProcessor"),
}


# model_type -> (module, class): processors that transformers marks as needing torchvision
# although their image path does not (Pixtral's imports a size helper from the torchvision
# image processor's module).
PROCESSORS = {"mistral3": ("pixtral.processing_pixtral", "PixtralProcessor")}


class _NoTorchvision(types.ModuleType):
    """Stands in for torchvision while a video processor module is imported: any use raises."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"torchvision.{name}: videos need torchvision, which is not installed here "
            "(images do not; see llava_ablate/base/video_processors.py)"
        )


def _import_without_torchvision(module: str):
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2"]
    names.append("torchvision.transforms.v2.functional")
    # Absent, or blocked (None: how a test makes an installed torchvision unimportable).
    stubs = {n: _NoTorchvision(n) for n in names if sys.modules.get(n) is None}
    before = {n: sys.modules[n] for n in stubs if n in sys.modules}
    for n, stub in stubs.items():
        stub.__path__ = []  # a package, so the submodules import
        sys.modules[n] = stub
        parent, _, child = n.rpartition(".")
        if parent in stubs:  # `import a.b.c as x` walks the attributes
            setattr(stubs[parent], child, stub)
    try:
        return importlib.import_module(f"transformers.models.{module}")
    finally:
        for n in stubs:
            sys.modules.pop(n, None)
        sys.modules.update(before)


def video_processor_class(model_type: str) -> type:
    """The video processor class of `model_type`'s processor, importable without torchvision."""
    from transformers.utils import is_torchvision_available

    module, name = VIDEO_PROCESSORS[model_type]
    if is_torchvision_available():
        return getattr(importlib.import_module(f"transformers.models.{module}"), name)
    return getattr(_import_without_torchvision(module), name)


@functools.cache
def allow_video_processors() -> None:
    from transformers import processing_utils
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.processing_auto import AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.utils import is_torchvision_available
    from transformers.video_processing_utils import VideoProcessorMixin

    if is_torchvision_available():
        return
    # The class check resolves names in its own handle on the transformers namespace, which
    # exports the mixin only with torchvision.
    processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin
    for model_type in VIDEO_PROCESSORS:
        cls = video_processor_class(model_type)
        AutoVideoProcessor.register(CONFIG_MAPPING[model_type], cls, exist_ok=True)
    for model_type, (module, name) in PROCESSORS.items():
        cls = getattr(_import_without_torchvision(module), name)
        AutoProcessor.register(CONFIG_MAPPING[model_type], cls, exist_ok=True)
        # AutoProcessor resolves a saved `processor_class` by name in the family's package,
        # which hands out a dummy without torchvision: the real class takes the name there.
        package = importlib.import_module(f"transformers.models.{module.split('.')[0]}")
        setattr(package, name, cls)


def processor_class(model_type: str) -> type:
    """The processor class of `model_type` where transformers would hand out a dummy without
    torchvision (see PROCESSORS)."""
    from transformers.utils import is_torchvision_available

    module, name = PROCESSORS[model_type]
    if is_torchvision_available():
        return getattr(importlib.import_module(f"transformers.models.{module}"), name)
    return getattr(_import_without_torchvision(module), name)
