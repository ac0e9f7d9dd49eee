"""BaselineCNN's fast path: conv + max-pool as one op (torch.ops.labkit.conv_pool, a C kernel compiled on first use), fc1 and fc2 through W2 @ W1 (in the same C library, over all threads).

The kernel (convpool.c) is built per CPU level: LABKIT_CPU_LEVEL = x86-64-v2 | x86-64-v3 |
x86-64-v4 | native (default native), so one machine can run what an SSE4, AVX2 or AVX-512 CPU
runs. Builds are cached in a private folder (LABKIT_CACHE, else $XDG_CACHE_HOME/labkit or
~/.cache/labkit); any failure to build, load or check one falls back to torch's ops with one
warning. LABKIT_NO_KERNEL=1 switches the kernel off.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .device import cpu_flags, is_x86_64

SOURCE = Path(__file__).with_name("convpool.c")
CPU_LEVELS = ("x86-64-v2", "x86-64-v3", "x86-64-v4", "native")
ABI_VERSION = 3  # convpool_abi_version() of the source this module drives

# What each x86-64 level requires, as Linux names the flags in /proc/cpuinfo (pni = SSE3, abm = LZCNT).
_V2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVEL_FLAGS = {"x86-64-v2": frozenset(_V2), "x86-64-v3": frozenset(_V3), "x86-64-v4": frozenset(_V4)}

_kernels: dict[str, "Kernel | None"] = {}  # level -> the loaded build (None: failed), once per process
_errors: dict[str, str] = {}
_warned: set[str] = set()
_private_tmp: Path | None = None
_cc_version: dict[str, str] = {}


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- the CPU


def supported_levels() -> list[str]:
    """The CPU levels this CPU can run, lowest first; 'native' always."""
    flags = cpu_flags()
    x86 = [lv for lv, need in LEVEL_FLAGS.items() if is_x86_64() and need <= flags]
    return x86 + ["native"]


def cpu_level() -> str:
    """The level LABKIT_CPU_LEVEL asks for (default native); one warning and 'native' when it is unknown or unsupported."""
    asked = os.environ.get("LABKIT_CPU_LEVEL", "").strip() or "native"
    if asked not in CPU_LEVELS:
        _warn_once(f"labkit: LABKIT_CPU_LEVEL={asked!r} is not one of {', '.join(CPU_LEVELS)}; using native")
        return "native"
    if asked not in supported_levels():
        _warn_once(f"labkit: LABKIT_CPU_LEVEL={asked} needs CPU flags this CPU lacks "
                   f"({', '.join(sorted(LEVEL_FLAGS[asked] - cpu_flags())) or 'not an x86-64 CPU'}); using native")
        return "native"
    return asked


# ---------------------------------------------------------------- the private cache folder


class UnsafeCacheError(OSError):
    """A cache folder or file another user could have written."""


def _check_private_dir(path: Path) -> None:
    """Raise UnsafeCacheError unless path is a folder owned by this user and not writable by group or others."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheError(f"{path} is not a folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UnsafeCacheError(f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    if st.st_mode & 0o022:
        raise UnsafeCacheError(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):03o})")


def _temp_cache() -> Path:
    """A private folder for this process only (mkdtemp: mode 0700, unpredictable name), removed at exit."""
    global _private_tmp
    if _private_tmp is None:
        _private_tmp = Path(tempfile.mkdtemp(prefix="labkit-kernels-"))
        atexit.register(shutil.rmtree, _private_tmp, True)
    return _private_tmp


def cache_dir() -> Path:
    """Where kernel builds are cached: LABKIT_CACHE, else $XDG_CACHE_HOME/labkit or ~/.cache/labkit.

    The folder is created with mode 0700 when missing and used only if it is owned by this user and
    not writable by group or others; otherwise (one warning) and when it cannot be created or written,
    a private temporary folder is used instead.
    """
    base = os.environ.get("LABKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "labkit")
    path = Path(os.path.realpath(base))  # judge and use the real folder, not a link that could be swapped
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        _check_private_dir(path)
        if not os.access(path, os.W_OK | os.X_OK):
            return _temp_cache()
        return path
    except UnsafeCacheError as e:
        _warn_once(f"labkit: kernel cache not used ({e}); building in a private temporary folder instead")
        return _temp_cache()
    except OSError:  # cannot be created (read-only home, ...)
        return _temp_cache()


def _open_trusted(path: Path) -> int:
    """A read-only descriptor on path if it is a regular file owned by this user, not group/other-writable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(st.st_mode)
               else f"owned by uid {st.st_uid}" if hasattr(os, "getuid") and st.st_uid != os.getuid()
               else f"writable by group or others (mode {stat.S_IMODE(st.st_mode):03o})" if st.st_mode & 0o022
               else "")
    if problem:
        os.close(fd)
        raise UnsafeCacheError(f"{path}: {problem}")
    return fd


# ---------------------------------------------------------------- building and loading


class Kernel:
    """One loaded build of convpool.c: its CPU level, compiler flags, vector width and library file."""

    def __init__(self, lib: ctypes.CDLL, level: str, flags: list[str], path: Path):
        vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.convpool_forward.argtypes = [vp, vp, vp, vp, i64, i32]
        lib.convpool_backward.argtypes = [vp, vp, vp, vp, vp, vp, i64, i32]
        lib.chain_forward.argtypes = [vp, vp, vp, vp, vp, vp, i64, i32]
        lib.chain_backward.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, i64, i32]
        if lib.convpool_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path.name} is ABI {lib.convpool_abi_version()}, expected {ABI_VERSION}")
        self._lib, self.level, self.flags, self.path = lib, level, flags, path
        self.vector_width = lib.convpool_vector_width()  # floats per SIMD vector the build uses

    def __repr__(self) -> str:
        return f"Kernel({self.level}, {self.vector_width} floats/vector, flags {' '.join(self.flags)})"

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """max_pool2d(conv2d(x, weight, bias, padding=1), 2) as (B, 14, 14, 16), channels last; CPU fp32."""
        x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
        out = torch.empty(x.shape[0], 14, 14, 16)
        self._lib.convpool_forward(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                   x.shape[0], torch.get_num_threads())
        return out

    def backward(self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        """(dweight (16, 1, 3, 3), dbias (16,)) from grad = dLoss/dout as (B, 14, 14, 16), channels last."""
        grad, x, weight, bias = grad.contiguous(), x.contiguous(), weight.contiguous(), bias.contiguous()
        dw, db = torch.empty(16, 1, 3, 3), torch.empty(16)
        self._lib.convpool_backward(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), grad.data_ptr(),
                                    dw.data_ptr(), db.data_ptr(), x.shape[0], torch.get_num_threads())
        return dw, db

    def chain_forward(self, h, w1, w2, c0):
        """(m, logits): m (10, 3136) = W2 W1 in h's (H, W, C) column order, logits (B, 10) = h m^T + c0."""
        h, w1, w2, c0 = h.contiguous(), w1.contiguous(), w2.contiguous(), c0.contiguous()
        m, logits = torch.empty(10, 3136), torch.empty(h.shape[0], 10)
        self._lib.chain_forward(h.data_ptr(), w1.data_ptr(), w2.data_ptr(), c0.data_ptr(), m.data_ptr(),
                                logits.data_ptr(), h.shape[0], torch.get_num_threads())
        return m, logits

    def chain_backward(self, g, h, m, w1, w2):
        """(dh (B, 3136) in h's order, a = g^T h (10, 3136) in W1's order, dw1 = W2^T a, a W1^T (10, 128))."""
        g, h, m, w1, w2 = g.contiguous(), h.contiguous(), m.contiguous(), w1.contiguous(), w2.contiguous()
        dh, a, dw1, dw2a = torch.empty_like(h), torch.empty(10, 3136), torch.empty_like(w1), torch.empty(10, 128)
        self._lib.chain_backward(g.data_ptr(), h.data_ptr(), m.data_ptr(), w1.data_ptr(), w2.data_ptr(), dh.data_ptr(),
                                 a.data_ptr(), dw1.data_ptr(), dw2a.data_ptr(), h.shape[0], torch.get_num_threads())
        return dh, a, dw1, dw2a


def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    if cc not in _cc_version:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        _cc_version[cc] = (run.stdout.splitlines() or [""])[0]
    return cc


# Flags per level, best first: without -fopenmp the kernel runs on one thread, without -march on the
# platform's baseline SIMD (still correct; Kernel.flags says what was used).
_BASE = ["-O3", "-fPIC", "-shared"]


def _flag_sets(level: str) -> list[list[str]]:
    march = f"-march={level}"
    return [[march, "-fopenmp"], [march], ["-fopenmp"], []]


def library_name(level: str, flags: list[str] | None = None) -> str:
    """The cache file name of a build: keyed by source, compiler, flags and (for native) the CPU's flags."""
    cc = _compiler()
    flags = _flag_sets(level)[0] if flags is None else flags
    cpu = sorted(cpu_flags()) if level == "native" else []
    key = repr((_BASE, flags, _cc_version[cc], platform.machine(), cpu)).encode()
    return f"convpool-{level}-{hashlib.sha256(SOURCE.read_bytes() + key).hexdigest()[:16]}.so"


def _load(path: Path) -> ctypes.CDLL:
    """dlopen path after checking the file: in a folder only this user can write, nobody can swap it in between.

    (Not through /proc/self/fd/N: the loader would take a reused N for a library it already has.)
    """
    os.close(_open_trusted(path))
    return ctypes.CDLL(str(path))  # torch is loaded first, so its OpenMP runtime is the one shared


def _self_check(k: Kernel) -> None:
    """The build's forward and backward on random data against torch's ops; raise if they differ."""
    with torch.autocast("cpu", enabled=False):  # the first use may come inside a bf16 region: the check is fp32
        _check_against_torch(k)


def _check_against_torch(k: Kernel) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 1, 28, 28), (16, 1, 3, 3), (16,)))
    g = torch.randn(3, 14, 14, 16, generator=gen)
    ref = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)
    _, ref_dw, ref_db = _reference_backward(g.permute(0, 3, 1, 2), x, w, b, (False, True, True))
    checks = [(k.forward(x, w, b), ref.permute(0, 2, 3, 1)), *zip(k.backward(g, x, w, b), (ref_dw, ref_db))]
    # The linear chain, h in (H, W, C) order, against torch's products in W1's (C, H, W) order.
    h, w1, w2, c0, gl = (torch.randn(*shape, generator=gen) for shape in ((3, 3136), (128, 3136), (10, 128), (10,), (3, 10)))
    m_ref = w2 @ w1
    m, logits = k.chain_forward(h, w1, w2, c0)
    dh, a, dw1, dw2a = k.chain_backward(gl, h, m, w1, w2)
    a_ref = gl.t() @ _to_chw(h)
    checks += [(m, _to_hwc(m_ref)), (logits, _to_chw(h) @ m_ref.t() + c0), (dh, _to_hwc(gl @ m_ref)), (a, a_ref),
               (dw1, w2.t() @ a_ref), (dw2a, a_ref @ w1.t())]
    for got, want in checks:
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-3):
            raise RuntimeError(f"{k.path.name} disagrees with torch (max error {(got - want).abs().max().item():.3g})")


def build(level: str = "native") -> Kernel:
    """Compile convpool.c for a CPU level (or take it from the cache), load and check it; raise on any failure.

    The level must be one of supported_levels() (a build for a level the CPU lacks would die of an
    illegal instruction).
    """
    if level not in supported_levels():
        raise ValueError(f"CPU level {level!r} is not one this CPU can run ({', '.join(supported_levels())})")
    cc = _compiler()
    folder = cache_dir()
    last_error = ""
    for flags in _flag_sets(level):
        path = folder / library_name(level, flags)
        for _ in range(2):
            if not path.exists():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
                run = subprocess.run([cc, *_BASE, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
                if run.returncode != 0:
                    os.unlink(tmp)
                    last_error = (run.stderr.strip().splitlines() or ["failed"])[0]
                    break
                os.chmod(tmp, 0o600)  # the linker made it with the umask's mode
                os.replace(tmp, path)  # atomic: a concurrent build never sees half a file
            try:
                k = Kernel(_load(path), level, flags, path)
            except OSError as e:  # a damaged or untrusted cached file: build it again, once
                last_error = str(e)
                path.unlink(missing_ok=True)
                continue
            _self_check(k)
            return k
    raise RuntimeError(f"{cc} could not build {SOURCE.name} for {level}: {last_error}")


def kernel(level: str | None = None) -> Kernel | None:
    """The kernel for level (default: cpu_level()), built once per process; None (one warning) when it cannot be had."""
    if os.environ.get("LABKIT_NO_KERNEL"):
        return None
    level = level or cpu_level()
    if level not in _kernels:
        try:
            _kernels[level] = build(level)
        except Exception as e:  # anything (no compiler, missing symbol, wrong answers): torch's ops instead
            _kernels[level] = None
            _errors[level] = f"{type(e).__name__}: {e}"
            _warn_once(f"labkit: fused conv-pool kernel unavailable for {level} ({_errors[level]}); BaselineCNN "
                       "trains with torch's conv2d + max_pool2d instead (same numbers, slower)")
    return _kernels[level]


def kernel_error(level: str | None = None) -> str:
    """Why kernel(level) is None ('' if it is not)."""
    if os.environ.get("LABKIT_NO_KERNEL"):
        return "LABKIT_NO_KERNEL is set"
    return _errors.get(level or cpu_level(), "")


# ---------------------------------------------------------------- the op


def _fits_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """The shapes and dtypes the compiled kernel takes: CPU fp32 (B, 1, 28, 28), 16 3x3 filters."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() == 4 and tuple(x.shape[1:]) == (1, 28, 28) and tuple(weight.shape) == (16, 1, 3, 3)
            and (bias is None or (bias.dtype == torch.float32 and tuple(bias.shape) == (16,))))


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether conv_pool runs the compiled kernel for this input: it fits, and the kernel is available."""
    return _fits_kernel(x, weight) and kernel() is not None


def _reference_backward(grad, x, weight, bias, mask):
    """(dx, dweight, dbias) of max_pool2d(conv2d(x, w, b, padding=1), 2) with torch's own ops (None where mask is False)."""
    y = F.conv2d(x, weight, bias, padding=1)  # (B, C, H, W)
    _, idx = F.max_pool2d(y, 2, return_indices=True)
    dy = torch.ops.aten.max_pool2d_with_indices_backward(grad, y, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
    return torch.ops.aten.convolution_backward(dy, x, weight, [weight.shape[0]], [1, 1], [1, 1], [1, 1], False,
                                               [0, 0], 1, list(mask))


@torch.library.custom_op("labkit::conv_pool", mutates_args=())
def conv_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """max_pool2d(conv2d(x, weight, bias, padding=1), 2) in channels-last memory; the C kernel for (B, 1, 28, 28) fp32 on CPU."""
    k = kernel() if _fits_kernel(x, weight, bias) else None
    if k is not None:
        return k.forward(x, weight, bias).permute(0, 3, 1, 2)  # (B, 16, 14, 14), channels-last strides
    return F.max_pool2d(F.conv2d(x, weight, bias, padding=1), 2).contiguous(memory_format=torch.channels_last)


@conv_pool.register_fake
def _(x, weight, bias):
    return torch.empty((x.shape[0], weight.shape[0], x.shape[2] // 2, x.shape[3] // 2), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


# Under autocast the op runs in fp32 with autocast off, on any device: its output then has its inputs' dtype, as the
# fake says (left to itself, the fallback's conv2d would autocast to bf16 while the kernel returns fp32).
if hasattr(torch.library, "register_autocast"):
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("labkit::conv_pool", _device_type, torch.float32)


@torch.library.custom_op("labkit::conv_pool_backward", mutates_args=())
def conv_pool_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """conv_pool's (dweight, dbias) from grad = dLoss/dout (B, 16, 14, 14); the pool's winners are recomputed."""
    k = kernel() if _fits_kernel(x, weight, bias) and grad.dtype == torch.float32 else None
    if k is not None:
        return k.backward(grad.permute(0, 2, 3, 1), x, weight, bias)
    _, dw, db = _reference_backward(grad, x, weight, bias, (False, True, True))
    return dw.contiguous(), db.contiguous()


@conv_pool_backward.register_fake
def _(grad, x, weight, bias):
    return weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # x, weight, bias: the backward recomputes the pool's winners


def _conv_pool_grad(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    if ctx.needs_input_grad[0]:  # a gradient for the images: torch's ops (never needed in training)
        return _reference_backward(grad, x, weight, bias, (True, True, True))
    dw, db = conv_pool_backward(grad, x, weight, bias)
    return None, dw, db


conv_pool.register_autograd(_conv_pool_grad, setup_context=_setup_context)


# ---------------------------------------------------------------- fc1 and fc2 through W2 @ W1


def _to_hwc(m):  # (n, 3136) columns in (C=16, H=14, W=14) order -> (H, W, C) order
    return m.view(-1, 16, 196).transpose(1, 2).reshape(-1, 3136)


def _to_chw(m):  # the inverse of _to_hwc
    return m.view(-1, 196, 16).transpose(1, 2).reshape(-1, 3136)


def _chain_logits(h, m, b1, w2, b2):
    """Logits (B, 10) = h @ m.T + (W2 b1 + b2), with m = W2 @ W1 in h's column order."""
    return torch.addmm(torch.addmv(b2, w2, b1), h, m.t())


def _chain_kernel(h, w1, w2, channels_last: bool) -> "Kernel | None":
    """The kernel when it can run this chain: CPU fp32, h in (H, W, C) order, no autocast (bf16 keeps torch's products)."""
    if not (channels_last and h.device.type == "cpu" and h.dtype == w1.dtype == w2.dtype == torch.float32
            and h.dim() == 2 and h.shape[1] == 3136 and tuple(w1.shape) == (128, 3136) and tuple(w2.shape) == (10, 128)
            and not torch.is_autocast_enabled("cpu")):
        return None
    return kernel()


class _LinearChain(torch.autograd.Function):
    """fc2(fc1(h)) with no activation between, evaluated through the 10 x 3136 product W2 @ W1."""

    @staticmethod
    def forward(ctx, h, w1, b1, w2, b2, channels_last):
        k = _chain_kernel(h, w1, w2, channels_last)
        if k is not None:  # the products split over the threads; m already in h's column order
            m, logits = k.chain_forward(h, w1, w2, torch.addmv(b2, w2, b1))
        else:
            m = w2 @ w1  # (10, 3136): the two layers as one map
            if channels_last:
                m = _to_hwc(m)  # columns in h's (H, W, C) order
            logits = _chain_logits(h, m, b1, w2, b2)  # (B, 10)
        ctx.channels_last, ctx.kernel = channels_last, k
        ctx.save_for_backward(h, w1, b1, w2, m)
        return logits

    @staticmethod
    def backward(ctx, g):  # g: (B, 10)
        h, w1, b1, w2, m = ctx.saved_tensors
        # Under autocast g, m (and h off the kernel) are bf16: every product in the weights' dtype, dh in h's
        h_dtype = h.dtype
        g, h, m = g.to(w1.dtype).contiguous(), h.to(w1.dtype), m.to(w1.dtype)
        gs = g.sum(0)  # (10,)
        db1 = w2.t() @ gs  # (128,)
        if ctx.kernel is not None:
            dh, _, dw1, dw2 = ctx.kernel.chain_backward(g, h, m, w1, w2)
            return (dh if ctx.needs_input_grad[0] else None), dw1, db1, torch.addr(dw2, gs, b1), gs, None
        dh = (g @ m).to(h_dtype) if ctx.needs_input_grad[0] else None  # (B, 3136), in h's column order
        a = g.t() @ h  # (10, 3136)
        if ctx.channels_last:
            a = _to_chw(a)
        dw1 = w2.t() @ a  # (128, 3136) = (g W2)^T h
        dw2 = torch.addr(a @ w1.t(), gs, b1)  # (10, 128) = g^T (h W1^T + b1)
        return dh, dw1, db1, dw2, gs, None


def linear_chain(h: torch.Tensor, w1, b1, w2, b2, channels_last: bool = False) -> torch.Tensor:
    """(h @ w1.T + b1) @ w2.T + b2 with its gradients, in ~1/6 of the FLOPs; h (B, 3136).

    With no activation between two linear layers, the gradient flowing into the first has rank
    at most 10 (the logits' width), so every product can go through 10-wide matrices instead of
    128-wide ones. Same mathematics; only the order of fp32 roundings differs. channels_last: h's
    columns are in (H, W, C) order (conv_pool's output permuted), w1's in (C, H, W) order.
    """
    return _LinearChain.apply(h, w1, b1, w2, b2, channels_last)
