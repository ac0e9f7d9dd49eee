"""The fused conv-pool op (every CPU level this host runs), the W2 @ W1 chain, and the kernel cache's rules."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from labkit import device, fastpath
from labkit.data import load_mnist
from labkit.models import BaselineCNN

HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None
LEVELS = fastpath.supported_levels()  # only levels this CPU runs get a test id: nothing to skip
WIDTH = {"x86-64-v2": 4, "x86-64-v3": 8, "x86-64-v4": 16}


@pytest.fixture(params=LEVELS)
def level(request, monkeypatch):
    """Each CPU level the host supports, as LABKIT_CPU_LEVEL; each built once per test session."""
    monkeypatch.setenv("LABKIT_CPU_LEVEL", request.param)
    k = fastpath.kernel(request.param)
    assert k is not None, fastpath.kernel_error(request.param)
    return k


def _digits(batch):
    images, labels = load_mnist("train")
    x = torch.tensor(images[:batch]).unsqueeze(1).float()  # real digits: many exact ties in the background
    return x, torch.tensor(labels[:batch]).long()


def _logits_and_grads(model, fwd, x, y):
    model.zero_grad()
    out = fwd(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_kernel_builds_where_there_is_a_compiler():
    """CI must exercise the kernel, not silently the fallback."""
    if not HAS_CC:
        pytest.skip("no C compiler on this machine: BaselineCNN uses the fallback path")
    assert fastpath.kernel() is not None, fastpath.kernel_error()


def test_kernel_first_used_inside_autocast_is_built(level, monkeypatch):
    """A process whose first use of the kernel is inside bf16 autocast (`--model baseline --precision bf16`) gets it."""
    monkeypatch.setattr(fastpath, "_kernels", {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = fastpath.kernel(level.level)
    assert k is not None and k.path == level.path, fastpath.kernel_error(level.level)


def test_level_vector_width(level):
    """The build's vector width follows the level: 4 floats SSE, 8 AVX2, 16 AVX-512 (native: what the CPU has)."""
    flags = device.cpu_flags()
    native = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    assert level.vector_width == WIDTH.get(level.level, native)


@pytest.mark.parametrize("batch", [64, 1, 37])
def test_forward_matches_reference_values_and_gradients(level, batch):
    """BaselineCNN.forward through the op at this level against the report's forward: logits and every gradient."""
    x, y = _digits(batch)
    torch.manual_seed(3)
    model = BaselineCNN()
    assert fastpath.usable(x, model.conv[0].weight)
    ref_out, ref_g = _logits_and_grads(model, model.forward_reference, x, y)
    out, g = _logits_and_grads(model, model.forward, x, y)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with torch.no_grad():  # the inference path gives the same logits
        torch.testing.assert_close(model(x), out, rtol=1e-6, atol=1e-4)


def test_fallback_matches_reference(no_kernel):
    """Without the kernel: torch's conv2d + max_pool2d and the W2 @ W1 chain, same numbers."""
    x, y = _digits(37)
    torch.manual_seed(3)
    model = BaselineCNN()
    assert not fastpath.usable(x, model.conv[0].weight)
    ref_out, ref_g = _logits_and_grads(model, model.forward_reference, x, y)
    out, g = _logits_and_grads(model, model.forward, x, y)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_pooling_ties_and_offsets_match_max_pool2d(level):
    """Ties (flat regions) go to the first offset and each winner routes its gradient, exactly as max_pool2d."""
    torch.manual_seed(0)
    x = torch.zeros(6, 1, 28, 28)
    x[1:] = torch.randint(0, 3, (5, 1, 28, 28)).float()  # few values: many exact ties
    w = torch.randint(-2, 3, (16, 1, 3, 3)).float().requires_grad_()  # integers: sums are exact
    b = torch.randint(-2, 3, (16,)).float().requires_grad_()
    g = torch.randint(-3, 4, (6, 16, 14, 14)).float()
    ref = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)
    ref_dw, ref_db = torch.autograd.grad(ref, (w, b), g)
    assert torch.equal(level.forward(x, w.detach(), b.detach()).permute(0, 3, 1, 2), ref)
    dw, db = level.backward(g.permute(0, 2, 3, 1), x, w.detach(), b.detach())
    assert torch.equal(dw, ref_dw) and torch.equal(db, ref_db)
    out = torch.ops.labkit.conv_pool(x, w, b)  # the registered op, through autograd
    assert torch.equal(out, ref)
    assert all(torch.equal(a, r) for a, r in zip(torch.autograd.grad(out, (w, b), g), (ref_dw, ref_db)))


def test_conv_pool_passes_opcheck(level):
    """The registered op's schema, autograd, fake (meta) implementation and AOT dispatch, as torch checks them."""
    x, _ = _digits(4)
    w, b = torch.randn(16, 1, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
    torch.library.opcheck(torch.ops.labkit.conv_pool.default, (x, w, b))
    torch.library.opcheck(torch.ops.labkit.conv_pool.default, (x.clone().requires_grad_(), w, b))  # gradient for x too


def test_conv_pool_any_shape_and_dtype_through_torch_ops():
    """Inputs the kernel does not take (other sizes, float64) give max_pool2d(conv2d(...)) and its gradients."""
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.labkit.conv_pool, (x, w, b))


@pytest.mark.parametrize("path", ["default", "fallback"])
def test_baseline_under_bf16_autocast_trains(path, request):
    """--precision bf16 with the baseline: the op (or, off the kernel, torch's conv) inside autocast, the chain in
    bf16; gradients are fp32 and close. Off the kernel the conv output is bf16, as on every GPU."""
    if path == "fallback":
        request.getfixturevalue("no_kernel")
    x, y = _digits(64)
    torch.manual_seed(3)
    model = BaselineCNN()
    _, ref_g = _logits_and_grads(model, model.forward_reference, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out, y)
    model.zero_grad()
    loss.backward()
    assert out.dtype == torch.bfloat16
    for p, r in zip(model.parameters(), ref_g):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, r, rtol=0.05, atol=0.05 * r.abs().max().item())


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (2, 3, 10, 12)])
@pytest.mark.parametrize("path", ["default", "fallback"])
def test_conv_pool_under_autocast_returns_what_its_fake_promises(path, shape, request):
    """Under bf16 autocast the op's output dtype (kernel or torch's ops) is the one its registered fake gives."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if path == "fallback":
        request.getfixturevalue("no_kernel")
    torch.manual_seed(0)
    x, w, b = torch.randn(*shape), torch.randn(5 if shape[1] == 3 else 16, shape[1], 3, 3), torch.randn(5 if shape[1] == 3 else 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = torch.ops.labkit.conv_pool(x, w, b)
        with FakeTensorMode() as mode:
            fake = torch.ops.labkit.conv_pool(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(b))
    assert real.dtype == fake.dtype == torch.float32 and real.shape == fake.shape
    torch.testing.assert_close(real, F.max_pool2d(F.conv2d(x, w, b, padding=1), 2), rtol=1e-5, atol=1e-4)


def test_linear_chain_matches_two_linear_layers():
    """fc2(fc1(h)) through W2 @ W1: output and all gradients (input included) against nn.Linear's autograd."""
    torch.manual_seed(0)
    fc1, fc2 = torch.nn.Linear(3136, 128), torch.nn.Linear(128, 10)
    h = torch.randn(50, 3136, requires_grad=True)
    g = torch.randn(50, 10)
    params = [h, fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    ref = fc2(fc1(h))
    ref_grads = torch.autograd.grad(ref, params, g)
    out = fastpath.linear_chain(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    grads = torch.autograd.grad(out, params, g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("batch", [128, 5])
def test_compiled_chain_matches_two_linear_layers(level, batch):
    """The chain in C (h in (H, W, C) order, split over the threads) against nn.Linear's autograd on h in (C, H, W) order."""
    torch.manual_seed(batch)
    fc1, fc2 = torch.nn.Linear(3136, 128), torch.nn.Linear(128, 10)
    h_chw = torch.randn(batch, 3136, requires_grad=True)
    h_hwc = fastpath._to_hwc(h_chw.detach()).requires_grad_()
    g = torch.randn(batch, 10)
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    ref = fc2(fc1(h_chw))
    ref_grads = torch.autograd.grad(ref, [h_chw, *params], g)
    assert fastpath._chain_kernel(h_hwc, fc1.weight, fc2.weight, True) is level  # the C path is the one tested
    out = fastpath.linear_chain(h_hwc, *params, channels_last=True)
    grads = torch.autograd.grad(out, [h_hwc, *params], g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0], fastpath._to_hwc(ref_grads[0]), rtol=1e-4, atol=1e-5 * ref_grads[0].abs().max().item())
    for a, b in zip(grads[1:], ref_grads[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_cpu_level_unknown_or_unsupported_warns_and_uses_native(monkeypatch):
    monkeypatch.setenv("LABKIT_CPU_LEVEL", "pentium-4")
    with pytest.warns(RuntimeWarning, match="pentium-4"):
        assert fastpath.cpu_level() == "native"
    with pytest.raises(ValueError):
        fastpath.build("pentium-4")


# ---------------------------------------------------------------- the cache's rules


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("LABKIT_CACHE", str(d))
    return d


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_planted_library_in_group_writable_folder_is_not_loaded(monkeypatch, tmp_path):
    """Another user's folder: a library planted under the expected name is never loaded (its constructor never runs)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.c"
    evil.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void f(void) '
                    f'{{ FILE *o = fopen("{marker}", "w"); if (o) fclose(o); }}\n')
    planted = shared / fastpath.library_name("native")
    subprocess.run([os.environ.get("CC") or "cc", "-shared", "-fPIC", "-o", str(planted), str(evil)], check=True)
    monkeypatch.setenv("LABKIT_CACHE", str(shared))
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        k = fastpath.build("native")
    assert not marker.exists()
    assert k.path.parent != shared and k.path.parent.stat().st_mode & 0o077 == 0  # a private temporary folder


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_group_writable_library_in_private_folder_is_rebuilt(private_cache):
    first = fastpath.build("native")
    first.path.chmod(0o666)
    second = fastpath.build("native")
    assert second.path == first.path and second.path.stat().st_mode & 0o022 == 0


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_damaged_cached_kernel_is_rebuilt(private_cache):
    """A cached build that is not a loadable library (e.g. a disk that filled up) is rebuilt, not fatal."""
    path = private_cache / fastpath.library_name("native")
    path.write_bytes(b"not a shared library")
    path.chmod(0o600)
    assert fastpath.build("native").path == path
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_cache_folder_created_private(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "new" / "labkit"))
    assert fastpath.cache_dir() == tmp_path / "new" / "labkit"
    assert (tmp_path / "new" / "labkit").stat().st_mode & 0o777 == 0o700


def test_unusable_cache_folder_falls_back_to_private_temp(monkeypatch, tmp_path):
    """A cache folder that cannot be written (or created) gives way to a private temporary folder."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes any folder: make one that cannot be created
        (tmp_path / "file").write_text("")
        d = tmp_path / "file" / "cache"
    else:
        d = tmp_path / "ro"
        d.mkdir(mode=0o500)
    monkeypatch.setenv("LABKIT_CACHE", str(d))
    got = fastpath.cache_dir()
    assert got != d and got.is_dir() and got.stat().st_mode & 0o077 == 0


_FALLBACK = textwrap.dedent("""
    import warnings, torch
    warnings.simplefilter("always")
    from labkit.models import BaselineCNN
    x = torch.rand(3, 1, 28, 28) * 255
    m = BaselineCNN()
    with warnings.catch_warnings(record=True) as caught:
        out = m(x); out.sum().backward(); m(x)
    torch.testing.assert_close(out, m.forward_reference(x), rtol=1e-5, atol=1e-3)
    print("WARNINGS", [str(w.message) for w in caught if "labkit" in str(w.message)])
""")


@pytest.mark.parametrize("compiler", ["missing", "no-symbols", "wrong-answers"])
def test_any_kernel_failure_falls_back_with_one_warning(compiler, tmp_path):
    """No compiler, a library missing the kernel's symbols, one that computes wrong numbers: torch's ops, one warning."""
    env = dict(os.environ, LABKIT_CACHE=str(tmp_path / "cache"), LABKIT_CPU_LEVEL="native")
    env.pop("LABKIT_NO_KERNEL", None)
    if compiler == "missing":
        env["CC"] = "no-such-compiler-here"
    else:
        if not HAS_CC:
            pytest.skip("no C compiler")
        fake = tmp_path / "fake.c"
        abi = f"int convpool_abi_version(void) {{ return {fastpath.ABI_VERSION}; }}\n"
        fake.write_text(abi if compiler == "no-symbols" else
                        "#include <stdint.h>\n" + abi + "int convpool_vector_width(void) { return 4; }\n"
                        "void convpool_forward(const float *x, const float *w, const float *b, float *o, int64_t n, int t) {}\n"
                        "void convpool_backward(const float *x, const float *w, const float *b, const float *g, float *dw,"
                        " float *db, int64_t n, int t) {}\n"
                        "void chain_forward(const float *h, const float *w1, const float *w2, const float *c, float *m,"
                        " float *o, int64_t n, int t) {}\n"
                        "void chain_backward(const float *g, const float *h, const float *m, const float *w1, const float *w2,"
                        " float *dh, float *a, float *dw1, float *dw2, int64_t n, int t) {}\n")
        cc = tmp_path / "cc"  # a 'compiler' that builds fake.c in place of convpool.c
        cc.write_text(f'#!/bin/sh\nargs=""\nfor a in "$@"; do case "$a" in *convpool.c) a="{fake}";; esac; '
                      f'args="$args $a"; done\nexec {os.environ.get("CC") or "cc"} $args\n')
        cc.chmod(0o755)
        env["CC"] = str(cc)
    run = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    line = run.stdout.split("WARNINGS", 1)[1]
    assert line.count("kernel unavailable") == 1 and line.count("labkit:") == 1, line
    assert {"missing": "not found", "no-symbols": "undefined symbol", "wrong-answers": "disagrees"}[compiler] in line
