"""Where a run computes: CUDA or CPU, fp32 or bf16, and what the processor is (name, flags, SIMD)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
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
    """"fp32" or "bf16": "auto" picks bf16 only where the hardware does it natively (GPUs of capability 8+, CPUs with AMX)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if model == "baseline":  # the report's network: fp32 code throughout (fused kernel, W2·W1 chain)
        return "fp32"
    if device.type == "cuda":
        return "bf16" if cuda_bf16_native(device) else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private; absent in older torch
    return "bf16" if device.type == "cpu" and amx() else "fp32"


def cuda_bf16_native(device: torch.device | str = "cuda") -> bool:
    """Whether the GPU does bf16 in hardware (compute capability 8.0 and up: A100, H100, RTX 30xx); a T4 or V100 only emulates it."""
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False
    check = torch.cuda.is_bf16_supported
    # torch's default counts emulation as support; ask for the native answer where torch can give it
    return check(including_emulation=False) if "including_emulation" in inspect.signature(check).parameters else True


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a run computes on, decided once: the device, the resolved precision, TF32 and determinism."""

    device: torch.device  # the device the run trains and evaluates on
    precision: str  # "fp32" or "bf16" (never "auto": resolved for this device and model)
    tf32: bool  # whether fp32 matrix products and convolutions may round to TF32 (10-bit mantissa) on CUDA
    deterministic: bool  # whether the same seed gives the same numbers (cuDNN's deterministic algorithms on CUDA)

    def record(self) -> dict:
        """The setup as provenance stores it (JSON-ready); on CUDA also the CUDA, cuDNN and capability versions."""
        out = {"device_type": self.device.type, "device": str(self.device), "device_name": device_name(self.device),
               "precision": self.precision, "tf32": self.tf32, "deterministic": self.deterministic}
        if self.device.type == "cuda":
            out.update(cuda_versions(self.device))
        return out


def setup_run(cfg) -> RunSetup:
    """The one place that decides a run's device, precision, TF32 and determinism from its TrainConfig."""
    device = resolve_device(cfg.device)
    # TF32 stays off: "fp32" means fp32, and the recorded (fp32) test accuracy must match a CPU re-evaluation.
    # Same seed, same numbers: CPU ops are deterministic; on CUDA apply() selects cuDNN's deterministic algorithms.
    return RunSetup(device=device, precision=resolve_precision(cfg.precision, device, cfg.model), tf32=False,
                    deterministic=True)


def apply(setup: RunSetup) -> None:
    """Set torch's process-wide flags for the run: TF32 and cuDNN's algorithm choice on CUDA; on CPU nothing changes."""
    if setup.device.type != "cuda":
        return
    # the legacy switches set every cuDNN and cuBLAS flag at once (the newer per-op API refuses mixed settings)
    torch.backends.cuda.matmul.allow_tf32 = setup.tf32
    torch.backends.cudnn.allow_tf32 = setup.tf32
    torch.backends.cudnn.deterministic = setup.deterministic
    torch.backends.cudnn.benchmark = not setup.deterministic  # benchmarking picks algorithms by timing: not repeatable


def cuda_versions(device: torch.device | str = "cuda") -> dict:
    """CUDA and cuDNN versions, the GPU's compute capability, and the TF32 and determinism flags now set."""
    try:  # raises when the TF32 flags were set through a mix of torch's old and new APIs
        tf32 = {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    except RuntimeError:
        tf32 = {"matmul_tf32": "mixed", "cudnn_tf32": "mixed"}
    major, minor = torch.cuda.get_device_capability(device)
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "capability": f"{major}.{minor}",
            **tf32, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


DEFAULT_GPUS_PER_TRIAL = 0.25  # where the cluster has GPUs: four small trials share one


def trial_resources(device: str, cluster_gpus: float, gpus_per_trial: float | None) -> tuple[float, str]:
    """(GPUs each sweep trial reserves, the device it must train on) for a sweep's --device and --gpus-per-trial.

    Ray hides no GPU from a worker that reserved none, so a trial trains on CUDA only when it holds a GPU share.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if gpus_per_trial is not None and not gpus_per_trial >= 0:
        raise ValueError(f"gpus per trial must be >= 0, not {gpus_per_trial!r}")
    if device == "cpu":
        if gpus_per_trial:
            raise ValueError(f"device 'cpu' trains on no GPU, but {gpus_per_trial:g} GPU(s) per trial were asked for")
        return 0.0, "cpu"
    default = DEFAULT_GPUS_PER_TRIAL if cluster_gpus > 0 else 0.0
    gpus = float(gpus_per_trial if gpus_per_trial is not None else default)
    if device == "cuda" and gpus == 0:
        raise ValueError("device 'cuda' asked for, but the trials get no GPU "
                         + ("(give --gpus-per-trial > 0)" if cluster_gpus > 0 else "(the cluster has none)"))
    return (gpus, "cuda") if gpus > 0 else (0.0, "cpu")


def torch_device(name: str) -> torch.device:
    """A device for inference: "auto", "cpu", "cuda" or "cuda:N"; DeviceError naming it where torch cannot use it."""
    if name == "auto":
        return resolve_device("auto")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {name!r}: not a device name (use 'cpu', 'cuda', 'cuda:N' or 'auto')") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name!r}: torch sees no CUDA device (use 'cpu')")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name!r}: torch sees {count} CUDA device(s), numbered from 0")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r}: not one labkit runs on (use 'cpu', 'cuda', 'cuda:N' or 'auto')")
    return device


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
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else cpu_name()
