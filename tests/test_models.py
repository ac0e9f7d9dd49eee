import torch

from labkit.models import ImprovedCNN, BaselineCNN, build_model, count_parameters


def test_shapes():
    x = torch.rand(5, 1, 28, 28) * 255
    assert BaselineCNN()(x).shape == (5, 10)
    assert ImprovedCNN()(x).shape == (5, 10)
    assert count_parameters(BaselineCNN()) == 160 + 3136 * 128 + 128 + 1290


def test_same_state_dict_as_the_reports_net():
    from labkit import reference as report_loop

    torch.manual_seed(0)
    theirs = report_loop.Net()
    ours = BaselineCNN()
    ours.load_state_dict(theirs.state_dict())  # the report's cnn.pth loads as is
    x = torch.randint(0, 256, (4, 1, 28, 28)).float()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-3)


def test_registry():
    assert isinstance(build_model("baseline"), BaselineCNN)
    assert isinstance(build_model("improved"), ImprovedCNN)
