"""Where a run computes: CUDA or CPU, fp32 or bf16, and what the processor is (name, flags, SIMD)."""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() == name:
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 'flags', ARM 'Features'); empty elsewhere."""
    return frozenset((_cpuinfo_field("flags") or _cpuinfo_field("Features")).split())


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def isa_summary() -> str:
    """This CPU's SIMD in a few words, e.g. 'AVX-512 (avx512f, avx512_bf16, ...), AVX2, FMA; no AMX'."""
    flags = cpu_flags()
    if not flags:
        return f"{platform.machine()} (flags unknown)"
    if not is_x86_64():
        return f"{platform.machine()}: " + ", ".join(f for f in ("asimd", "sve", "sve2", "bf16") if f in flags)
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    parts = []
    if avx512:
        parts.append(f"AVX-512 ({', '.join(avx512)})")
    parts += [name for name, flag in (("AVX2", "avx2"), ("FMA", "fma"), ("AVX", "avx"), ("SSE4.2", "sse4_2")) if flag in flags]
    amx = sorted(f for f in flags if f.startswith("amx"))
    return ", ".join(parts) + ("; AMX (" + ", ".join(amx) + ")" if amx else "; no AMX")


def device_name(device: torch.device | str) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    return torch.cuda.get_device_name() if str(device).startswith("cuda") else cpu_name()
