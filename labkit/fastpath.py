"""SeedCNN's fast path: conv + max-pool in one C kernel (convpool.c, compiled on first use), fc1 and fc2 through W2 @ W1."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("convpool.c")
_lib: ctypes.CDLL | None = None
_tried = False
_why_not = ""


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux) or its name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    """LABKIT_CACHE, else ~/.cache/labkit; a temp folder when that cannot be created."""
    base = Path(os.environ.get("LABKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "labkit"))
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"labkit-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))  # torch is imported first, so its OpenMP runtime is the one shared
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.convpool_forward.argtypes = [vp, vp, vp, vp, vp, i64, i32]
    lib.convpool_backward.argtypes = [vp, vp, vp, i32, vp, vp, vp, i64, i32]
    return lib


def _self_check(lib: ctypes.CDLL) -> None:
    """The kernel's forward on random images against torch's conv2d + max_pool2d; raise if they differ."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 1, 28, 28), (16, 1, 3, 3), (16,)))
    out = torch.empty(3, 14, 14, 16)
    lib.convpool_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(), None, 3, torch.get_num_threads())
    ref = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x, w, b, padding=1), 2).permute(0, 2, 3, 1)
    if not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"compiled kernel disagrees with torch (max error {(out - ref).abs().max().item():.3g})")


# Compiler flags, best first: without -fopenmp the kernel runs on one thread, without -march=native
# on the baseline SIMD of the platform.
_BASE = ["-O3", "-fPIC", "-shared"]
_FLAGS = (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], [])


def _so_path(cc: str, flags: list[str]) -> Path:
    """Where the build for this (source, compiler, flags, CPU) is cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256(SOURCE.read_bytes() + repr((_BASE, flags, version, _cpu_id())).encode()).hexdigest()[:16]
    return _cache_dir() / f"convpool-{key}.so"


def _build() -> ctypes.CDLL:
    """Compile convpool.c once per (source, compiler, flags, CPU) into the cache folder, load and check it."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    base = [cc, *_BASE]
    last_error = ""
    for flags in _FLAGS:
        path = _so_path(cc, flags)
        for _ in range(2):
            if not path.exists():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
                os.close(fd)
                run = subprocess.run([*base, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
                if run.returncode != 0:
                    os.unlink(tmp)
                    last_error = (run.stderr.strip().splitlines() or ["failed"])[0]
                    break
                os.replace(tmp, path)  # atomic: a concurrent build never sees half a file
            try:
                lib = _load(path)
            except OSError as e:  # a damaged cached file: build it again, once
                last_error = str(e)
                path.unlink(missing_ok=True)
                continue
            _self_check(lib)
            return lib
    raise RuntimeError(f"{cc} could not build {SOURCE.name}: {last_error}")


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one warning saying why) when it cannot be built here."""
    global _lib, _tried, _why_not
    if not _tried:
        _tried = True
        if os.environ.get("LABKIT_NO_KERNEL"):
            _why_not = "LABKIT_NO_KERNEL is set"
        else:
            try:
                _lib = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _why_not = str(e)
                warnings.warn(f"labkit: fused conv-pool kernel unavailable ({e}); SeedCNN trains with "
                              "torch's conv2d + max_pool2d instead (same numbers, slower)", RuntimeWarning)
    return _lib


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether seed_forward can take this input: CPU fp32 (B, 1, 28, 28), no gradient wanted for x."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and tuple(x.shape[1:]) == (1, 28, 28) and tuple(weight.shape) == (16, 1, 3, 3) and weight.is_contiguous()
            and not x.requires_grad and kernel() is not None)


def _conv_pool(x, weight, bias, want_arg: bool):
    """The kernel's max_pool2d(conv2d(x, w, b, padding=1), 2): (B, 14, 14, 16), channels last; and the argmax."""
    b = x.shape[0]
    out = torch.empty(b, 14, 14, 16)
    arg = torch.empty(b, 14, 14, 16, dtype=torch.uint8) if want_arg else None
    _lib.convpool_forward(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
                          arg.data_ptr() if want_arg else None, b, torch.get_num_threads())
    return out, arg


def _to_hwc(m):  # (n, 3136) columns in (C=16, H=14, W=14) order -> (H, W, C) order
    return m.view(-1, 16, 196).transpose(1, 2).reshape(-1, 3136)


def _to_chw(m):  # the inverse of _to_hwc
    return m.view(-1, 196, 16).transpose(1, 2).reshape(-1, 3136)


def _chain_logits(h, m, b1, w2, b2):
    """Logits (B, 10) = h @ m.T + (W2 b1 + b2), with m = W2 @ W1 in h's column order."""
    return torch.addmm(torch.addmv(b2, w2, b1), h, m.t())


def _chain_grads(g, a, w1, b1, w2):
    """fc1's and fc2's gradients from g (B, 10) at the logits and a = g^T h (10, 3136), h in (C, H, W) order."""
    gs = g.sum(0)  # (10,)
    dw1 = w2.t() @ a  # (128, 3136) = (g W2)^T h
    db1 = w2.t() @ gs  # (128,)
    dw2 = torch.addr(a @ w1.t(), gs, b1)  # (10, 128) = g^T (h W1^T + b1)
    return dw1, db1, dw2, gs


class _SeedFused(torch.autograd.Function):
    """SeedCNN's whole forward: conv + pool in the kernel, then fc2(fc1(.)) through W2 @ W1."""

    @staticmethod
    def forward(ctx, x, wc, bc, w1, b1, w2, b2):
        h, arg = _conv_pool(x, wc, bc, want_arg=True)
        h = h.flatten(1)  # (B, 3136), channels last
        mh = _to_hwc(w2 @ w1)  # (10, 3136): the two linear layers as one map, columns in h's order
        ctx.save_for_backward(x, arg, h, w1, b1, w2, mh)
        return _chain_logits(h, mh, b1, w2, b2)  # (B, 10)

    @staticmethod
    def backward(ctx, g):  # g: (B, 10)
        x, arg, h, w1, b1, w2, mh = ctx.saved_tensors
        g = g.contiguous()
        dw1, db1, dw2, db2 = _chain_grads(g, _to_chw(g.t() @ h), w1, b1, w2)
        dwc, dbc = torch.empty(16, 1, 3, 3), torch.empty(16)
        # dLoss/dh = g @ mh is formed inside the kernel, pixel by pixel, never stored
        _lib.convpool_backward(x.data_ptr(), g.data_ptr(), mh.data_ptr(), g.shape[1], arg.data_ptr(),
                               dwc.data_ptr(), dbc.data_ptr(), x.shape[0], torch.get_num_threads())
        return None, dwc, dbc, dw1, db1, dw2, db2


def seed_forward(x, conv, fc1, fc2) -> torch.Tensor:
    """SeedCNN's logits (B, 10) from x (B, 1, 28, 28) through the kernel; check usable() first."""
    x = x.contiguous()
    params = (conv.weight, conv.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _SeedFused.apply(x, *params)
    with torch.no_grad():
        h = _conv_pool(x, conv.weight, conv.bias, want_arg=False)[0].flatten(1)  # (B, 3136)
        return _chain_logits(h, _to_hwc(fc2.weight @ fc1.weight), fc1.bias, fc2.weight, fc2.bias)


class _LinearChain(torch.autograd.Function):
    """fc2(fc1(h)) with no activation between, evaluated through the 10 x 3136 product W2 @ W1."""

    @staticmethod
    def forward(ctx, h, w1, b1, w2, b2):
        m = w2 @ w1  # (10, 3136): the two layers as one map
        ctx.save_for_backward(h, w1, b1, w2, m)
        return _chain_logits(h, m, b1, w2, b2)  # (B, 10)

    @staticmethod
    def backward(ctx, g):  # g: (B, 10)
        h, w1, b1, w2, m = ctx.saved_tensors
        dh = g @ m if ctx.needs_input_grad[0] else None  # (B, 3136)
        return (dh, *_chain_grads(g, g.t() @ h, w1, b1, w2))


def linear_chain(h: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """(h @ w1.T + b1) @ w2.T + b2 with its gradients, in ~1/6 of the FLOPs; h (B, 3136).

    With no activation between two linear layers, the gradient flowing into the first has rank
    at most 10 (the logits' width), so every product can go through 10-wide matrices instead of
    128-wide ones. Same mathematics; only the order of fp32 roundings differs.
    """
    return _LinearChain.apply(h, w1, b1, w2, b2)
