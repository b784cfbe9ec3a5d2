"""llava-ablate: train and ablate LLaVA-style MLLMs, and measure how well they classify images."""

__version__ = "0.1.0"
