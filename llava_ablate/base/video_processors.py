"""Let LLaVA-OneVision processors be built and loaded where torchvision is not installed.

`LlavaOnevisionProcessor` carries a video processor, and transformers ties every video
processor to torchvision: without it (this project's CPU machines: the PyPI torchvision breaks
beside the CPU torch build) the processor's class check cannot find `VideoProcessorMixin`, and
`AutoProcessor.from_pretrained` gets a dummy `LlavaOnevisionVideoProcessor` that refuses to load.
Images never touch the video processor. `allow_video_processors()` registers the real class
through transformers' own `AutoVideoProcessor.register` and exposes the mixin the check looks
for; with torchvision installed it does nothing, and stock loading works unchanged.
"""

from __future__ import annotations

import functools


@functools.cache
def allow_video_processors() -> None:
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    from transformers import LlavaOnevisionConfig, processing_utils
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )
    from transformers.video_processing_utils import VideoProcessorMixin

    # The class check resolves names in its own handle on the transformers namespace, which
    # exports the mixin only with torchvision.
    processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin
    AutoVideoProcessor.register(LlavaOnevisionConfig, LlavaOnevisionVideoProcessor, exist_ok=True)
