"""Peak dense 16-bit tensor-core FLOP/s of the accelerators MFU and HFU are reported against:
one table for the plan's GPU-hours (`gpu:` of a grid), the training log and `bench gpu`."""

from __future__ import annotations

import torch

# Vendors' datasheets, dense (no sparsity), bf16/fp16 tensor cores: SXM parts.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_flops(configured: float | None = None, device: torch.device | None = None
               ) -> tuple[float | None, str]:  # fmt: skip
    """(peak FLOP/s of one device, where it came from): `configured` TFLOP/s (train.peak_tflops)
    first, else the table by the CUDA device's name; None where neither is known (a CPU)."""
    if configured:
        return configured * 1e12, f"train.peak_tflops={configured:g}"
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"bf16 dense peak of {key} (base/accelerators.py)"
        return None, f"{name}: no peak known; set train.peak_tflops for MFU and HFU"
    return None, "no peak known for this device (CPU); set train.peak_tflops for MFU and HFU"
