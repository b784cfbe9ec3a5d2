"""Shared pieces of the benchmarks: tiny variants built from the project's own configs."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from llava_ablate.config import compose_config, to_object
from llava_ablate.model.build import build_variant

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"


def variant_from(overrides: list[str], cache_dir: str | Path = CACHE):
    """A variant composed from the project's own config groups (e.g. ["llm=smollm2_135m"])."""
    cfg = to_object(compose_config(overrides))
    return build_variant(cfg.vision, cfg.llm, cfg.projector, cache_dir=cache_dir)


def tiny_variant(image_size: int = 32, patch: int = 8, llm: str = "tiny_llama"):
    """A tiny random-init variant whose image processor works at `image_size` (e.g. CLIP's 336)."""
    return variant_from(
        [
            "vision=tiny_clip",
            f"llm={llm}",
            f"vision.config.image_size={image_size}",
            f"vision.config.patch_size={patch}",
        ]
    )


def digits_dataset(root: Path, n: int):
    """n scikit-learn digits as 64 px PNGs under `root` (10 classes: 10-option questions)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from llava_ablate.eval.datasets import ClassificationDataset, Sample

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    d = load_digits()
    samples = []
    for i in range(n):
        path = root / f"{i}.png"
        arr = (d.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(arr).convert("RGB").resize((64, 64)).save(path)
        samples.append(Sample(str(i), int(d.target[i]), str(path)))
    return ClassificationDataset("digits", names, samples)


def machine() -> dict:
    """The CPU, its count and the load, printed with every timing (figures depend on both)."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {"nproc": os.cpu_count(), "uptime": uptime, "load_1_5_15": os.getloadavg(), "cpu": cpu,
            "python": platform.python_version()}  # fmt: skip
