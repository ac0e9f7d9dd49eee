import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from labkit import fastpath
from labkit.models import ImprovedCNN, SeedCNN, build_model, count_parameters


def test_shapes():
    x = torch.rand(5, 1, 28, 28) * 255
    assert SeedCNN()(x).shape == (5, 10)
    assert ImprovedCNN()(x).shape == (5, 10)
    assert count_parameters(SeedCNN()) == 160 + 3136 * 128 + 128 + 1290


def test_same_state_dict_as_the_reports_net():
    import report_loop

    torch.manual_seed(0)
    theirs = report_loop.Net()
    ours = SeedCNN()
    ours.load_state_dict(theirs.state_dict())  # the report's cnn.pth loads as is
    x = torch.randint(0, 256, (4, 1, 28, 28)).float()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-3)


def _logits_and_grads(model, fwd, x, y):
    model.zero_grad()
    out = fwd(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("path", ["kernel", "fallback"])
@pytest.mark.parametrize("batch", [64, 1, 37])
def test_fast_forward_matches_reference_values_and_gradients(path, batch, request):
    """SeedCNN.forward (fused kernel, or the fallback) against the report's forward: logits and every gradient."""
    from labkit.data import load_mnist

    if path == "fallback":
        request.getfixturevalue("no_kernel")
    images, labels = load_mnist("train")
    x = torch.tensor(images[:batch]).unsqueeze(1).float()  # real digits: many exact ties in the background
    y = torch.tensor(labels[:batch]).long()
    torch.manual_seed(3)
    model = SeedCNN()
    ref_out, ref_g = _logits_and_grads(model, model.forward_reference, x, y)
    out, g = _logits_and_grads(model, model.forward, x, y)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with torch.no_grad():  # the inference path (no argmax kept, no autograd) gives the same logits
        torch.testing.assert_close(model(x), out, rtol=1e-6, atol=1e-4)


def test_kernel_builds_where_there_is_a_compiler():
    """CI must exercise the kernel, not silently the fallback."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on this machine: SeedCNN uses the fallback path")
    assert fastpath.kernel() is not None, fastpath._why_not


def test_kernel_pooling_ties_and_offsets_match_max_pool2d():
    """Ties (flat regions) go to the first offset, and each winning offset routes its gradient, as in max_pool2d."""
    if fastpath.kernel() is None:
        pytest.skip("kernel unavailable")
    torch.manual_seed(0)
    x = torch.zeros(6, 1, 28, 28)
    x[1:] = torch.randint(0, 3, (5, 1, 28, 28)).float()  # few values: many exact ties
    w = torch.randint(-2, 3, (16, 1, 3, 3)).float().requires_grad_()  # integers: sums are exact
    b = torch.randint(-2, 3, (16,)).float().requires_grad_()
    g = torch.randint(-3, 4, (6, 16, 14, 14)).float()
    ref = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)
    ref_dw, ref_db = torch.autograd.grad(ref, (w, b), g)
    out, arg = fastpath._conv_pool(x, w.detach(), b.detach(), want_arg=True)
    assert torch.equal(out.permute(0, 3, 1, 2), ref)
    # the kernel's backward takes g at the logits and the map to them: use the identity map (n = 3136)
    mh = torch.eye(3136)
    g_hwc = g.permute(0, 2, 3, 1).reshape(6, 3136).contiguous()
    dw, db = torch.empty(16, 1, 3, 3), torch.empty(16)
    fastpath._lib.convpool_backward(x.data_ptr(), g_hwc.data_ptr(), mh.data_ptr(), 3136, arg.data_ptr(),
                                    dw.data_ptr(), db.data_ptr(), 6, torch.get_num_threads())
    assert torch.equal(dw, ref_dw) and torch.equal(db, ref_db)


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


def test_no_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fastpath, "_tried", False)
    monkeypatch.setattr(fastpath, "_lib", None)
    x = torch.rand(3, 1, 28, 28) * 255
    model = SeedCNN()
    with pytest.warns(RuntimeWarning, match="no-such-compiler-here"):
        out = model(x)
    torch.testing.assert_close(out, model.forward_reference(x), rtol=1e-5, atol=1e-3)
    assert fastpath.kernel() is None and "not found" in fastpath._why_not


def test_registry():
    assert isinstance(build_model("seed"), SeedCNN)
    assert isinstance(build_model("improved"), ImprovedCNN)


def test_damaged_cached_kernel_is_rebuilt(monkeypatch, tmp_path):
    """A cached build that is not a loadable library (e.g. a disk that filled up) is rebuilt, not fatal."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fastpath, "_tried", False)
    monkeypatch.setattr(fastpath, "_lib", None)
    path = fastpath._so_path(cc, list(fastpath._FLAGS[0]))
    path.write_bytes(b"not a shared library")
    assert fastpath.kernel() is not None, fastpath._why_not
    assert path.read_bytes()[:4] == b"\x7fELF"
