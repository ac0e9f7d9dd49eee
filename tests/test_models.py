import torch
import torch.nn.functional as F

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


def test_fast_forward_matches_reference_values_and_gradients():
    """The CPU fast path (conv at four pool offsets, max over offsets) against the report's forward."""
    from labkit.data import load_mnist

    images, labels = load_mnist("train")
    x = torch.tensor(images[:64]).unsqueeze(1).float()  # real digits: many exact ties in the background
    y = torch.tensor(labels[:64]).long()
    torch.manual_seed(3)
    model = SeedCNN()
    grads = []
    for fwd in (model.forward_reference, model.forward):
        model.zero_grad()
        out = fwd(x)
        F.cross_entropy(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref_out, ref_g), (out, g) = grads
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_registry():
    assert isinstance(build_model("seed"), SeedCNN)
    assert isinstance(build_model("improved"), ImprovedCNN)
