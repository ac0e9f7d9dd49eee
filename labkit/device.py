"""Where a run computes: CUDA or CPU, fp32 or bf16, and the name of the processor."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from .config import DEVICES, PRECISIONS


class DeviceError(ValueError):
    """A device or precision was asked for that this machine cannot give."""


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' asked for, but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, model: str = "improved") -> str:
    """"fp32" or "bf16": "auto" picks bf16 only where the hardware does it natively (CUDA, CPUs with AMX)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if model == "baseline":  # the report's network: fp32 code throughout (fused kernel, W2·W1 chain)
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private; absent in older torch
    return "bf16" if device.type == "cpu" and amx() else "fp32"


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    return torch.cuda.get_device_name() if str(device).startswith("cuda") else cpu_name()
