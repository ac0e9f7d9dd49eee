"""The peers (pytorch/examples' Net, the Keras convnet, Deotte's CNN) as labkit models and recipes, and the
TrainConfig fields their recipes need: optimiser, step schedule, augmentation strengths, hold-out."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit import train as train_module
from labkit.config import OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig, comparable, differing_fields
from labkit.recipes import RECIPES, recipe
from labkit.models import DeotteCNN, ExamplesCNN, KerasCNN, build_model, count_parameters

PEERS = ("examples", "keras", "deotte")
NEW_FIELDS = {"optimizer": "sgd", "lr_gamma": 1.0, "augment_degrees": 10.0, "augment_scale": 0.1,
              "augment_shift": 2.0, "holdout": 0.0}  # what every config saved before them meant


@pytest.fixture(scope="module")
def tiny():
    """256 training images and 200 test images: each peer's epoch in about a second."""
    from labkit.data import mnist_tensors

    d = mnist_tensors(limit_train=256)
    return {**d, "x_test": d["x_test"][:200], "y_test": d["y_test"][:200]}


class SourceNet(nn.Module):
    """pytorch/examples mnist/main.py's Net as published (log_softmax output): the oracle for ExamplesCNN."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.fc2(self.dropout2(F.relu(self.fc1(x))))
        return F.log_softmax(x, dim=1)


def test_examples_net_loads_the_sources_weights_and_its_loss_is_the_sources_nll():
    torch.manual_seed(0)
    theirs, ours = SourceNet().eval(), ExamplesCNN().eval()
    ours.load_state_dict(theirs.state_dict())  # same keys and shapes: the example's mnist_cnn.pt loads as is
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    logits = ours(x)
    torch.testing.assert_close(F.log_softmax(logits, 1), theirs(x))
    torch.testing.assert_close(F.cross_entropy(logits, y), F.nll_loss(theirs(x), y))
    assert count_parameters(ours) == (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (9216 * 128 + 128) + (128 * 10 + 10)


def test_keras_convnet_has_the_examples_34826_parameters_and_keras_initialisation():
    torch.manual_seed(0)
    net = KerasCNN()
    assert count_parameters(net) == 34_826  # the example's model.summary()
    assert net(torch.rand(3, 1, 28, 28) * 255).shape == (3, 10)
    assert net.features(torch.zeros(1, 1, 28, 28)).shape == (1, 64, 5, 5)
    for layer in (net.features[0], net.features[3], net.head[2]):
        assert not layer.bias.any()  # Keras' zero biases
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        limit = math.sqrt(6 / (fan_in + fan_out))  # glorot_uniform's bound
        assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.9 * limit


def test_deotte_cnn_has_his_layers_and_tensorflows_same_padding():
    torch.manual_seed(0)
    net = DeotteCNN().eval()
    buffers = sum(b.numel() for name, b in net.named_buffers() if "running" in name)
    assert count_parameters(net) == 326_410 and count_parameters(net) + buffers == 327_242  # Keras: trainable, total
    sizes, h = [], torch.rand(2, 1, 28, 28)
    for block in net.features:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [26, 24, 12, 12, 10, 8, 4, 4, 1] and net(torch.rand(2, 1, 28, 28) * 255).shape == (2, 10)
    for i, n in ((2, 24), (6, 8)):  # the stride-2 5x5 layers: TensorFlow's SAME pads total // 2 before, the rest after
        pad, conv = net.features[i][0], net.features[i][1]
        x = torch.randn(1, conv.in_channels, n, n)
        total = max((math.ceil(n / 2) - 1) * 2 + 5 - n, 0)
        expected = F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), conv.weight, conv.bias, stride=2)
        torch.testing.assert_close(conv(pad(x)), expected)
    bn = net.features[0][2]
    assert (bn.momentum, bn.eps) == (0.01, 1e-3)  # Keras' BatchNormalization(momentum=0.99, epsilon=1e-3)


def test_peers_take_the_pixels_their_sources_feed():
    x = torch.randint(0, 256, (4, 1, 28, 28)).float()
    for name, cls in (("keras", KerasCNN), ("deotte", DeotteCNN)):
        torch.manual_seed(0)
        net = cls().eval()
        torch.testing.assert_close(net(x), net.head(net.features(x / 255)))  # [0, 1] pixels, as Keras is fed
        assert recipe(name).normalize is False
        with pytest.raises(ConfigError, match=f"normalize must be False for model '{name}'") as err:
            recipe(name, normalize=True)
        assert "\n" not in str(err.value)
    assert recipe("examples").normalize is True  # transforms.Normalize((0.1307,), (0.3081,))


def test_recipes_are_their_sources():
    ex, ke, de = (recipe(name) for name in PEERS)
    assert (ex.optimizer, ex.lr, ex.momentum, ex.schedule, ex.lr_gamma, ex.batch_size, ex.epochs) == \
        ("adadelta", 1.0, 0.9, "step", 0.7, 64, 14)
    assert (ke.optimizer, ke.lr, ke.momentum, ke.schedule, ke.batch_size, ke.epochs, ke.holdout, ke.augment) == \
        ("adam", 1e-3, 0.9, "constant", 128, 15, 0.1, False)
    assert (de.optimizer, de.lr, de.schedule, de.lr_gamma, de.batch_size, de.epochs, de.holdout) == \
        ("adam", 1e-3, "step", 0.95, 64, 30, 0.1)
    assert (de.augment, de.augment_degrees, de.augment_scale) == (True, 15.0, 0.15)
    assert de.augment_shift == pytest.approx(0.1 * 28)  # width_shift_range=0.1 of 28 pixels
    for cfg in (ex, ke, de):
        assert cfg.precision == "fp32" and cfg.weight_decay == 0 and cfg.label_smoothing == 0 and not cfg.nesterov


@pytest.mark.parametrize("name", PEERS)
def test_each_peer_recipe_trains(name, tiny):
    result = train_module.train_run(recipe(name, epochs=2, limit_train=256, device="cpu"), data=tiny)
    first, last = result["epochs"]
    assert last["train_loss"] < first["train_loss"] and last["train_acc"] > 0.1  # learning: above chance
    assert ("holdout_acc" in last) == (recipe(name).holdout > 0)


def _same_gradients(opt_a, a, opt_b, b, steps=5):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn(pa.shape, generator=gen)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("optimizer, reference", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("adadelta", lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.9, eps=1e-6, weight_decay=5e-4)),
    ("adam", lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4)),
])
def test_the_optimisers_step_as_torchs_own(optimizer, reference):
    lr = {"sgd": 0.1, "adadelta": 1.0, "adam": 1e-3}[optimizer]
    cfg = TrainConfig(optimizer=optimizer, lr=lr, momentum=0.9, nesterov=optimizer == "sgd", weight_decay=5e-4)
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    theirs = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    theirs.load_state_dict(ours.state_dict())
    start = [p.detach().clone() for p in ours.parameters()]
    opt = train_module._optimizer(ours, cfg, torch.device("cpu"))
    assert type(opt).__name__.lower() == optimizer
    _same_gradients(opt, ours, reference(theirs.parameters()), theirs)
    for a, b, a0 in zip(ours.parameters(), theirs.parameters(), start):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, a0)  # the steps moved the weights


def test_the_step_schedule_is_torchs_steplr_once_per_epoch(tiny, monkeypatch):
    made = []
    real = train_module._optimizer
    monkeypatch.setattr(train_module, "_optimizer", lambda *a: made.append(real(*a)) or made[-1])

    class Lrs:  # the Progress interface: the lr after each batch
        def __init__(self):
            self.seen = []

        def batch(self, epoch, step, steps):
            self.seen.append((epoch, made[0].param_groups[0]["lr"]))

        def epoch_done(self, row):
            pass

    cfg = recipe("examples", epochs=3, batch_size=128, limit_train=256, device="cpu")
    progress = Lrs()
    train_module.train_run(cfg, data=tiny, progress=progress)
    ref_opt = torch.optim.Adadelta([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.7)
    expected = []
    for epoch in (1, 2, 3):
        expected += [(epoch, ref_opt.param_groups[0]["lr"])] * 2  # 256 images: two batches of 128 per epoch
        ref_opt.step()  # the epoch's last step, then the scheduler's, in torch's order
        ref.step()
    assert progress.seen == expected and expected[-1][1] == pytest.approx(0.49)


def test_the_holdout_is_never_trained_on_and_evaluated_each_epoch(tiny):
    from labkit.train import evaluate

    cfg = recipe("keras", epochs=1, limit_train=256, device="cpu")
    n = math.floor(256 * 0.9)  # Keras' validation_split keeps the first floor(n * (1 - split))
    held = train_module.train_run(cfg, data=tiny)
    without = train_module.train_run(cfg.replace(holdout=0.0, limit_train=n),
                                     data={**tiny, "x_train": tiny["x_train"][:n], "y_train": tiny["y_train"][:n]})
    for a, b in zip(held["final_model"].parameters(), without["final_model"].parameters()):
        assert torch.equal(a, b)  # the last 26 images changed nothing
    row = held["epochs"][0]
    assert row["train_loss"] == without["epochs"][0]["train_loss"]
    ev = evaluate(held["final_model"], tiny["x_train"][n:], tiny["y_train"][n:], cfg)
    assert (row["holdout_loss"], row["holdout_acc"]) == (ev["loss"], ev["acc"])
    assert "holdout_acc" not in without["epochs"][0]


def test_augmentation_strengths_reach_the_jitter(tiny, monkeypatch):
    calls = []
    real = train_module.jitter
    monkeypatch.setattr(train_module, "jitter", lambda *a: calls.append(a[3:]) or real(*a))
    train_module.train_run(recipe("deotte", epochs=1, limit_train=256, device="cpu"), data=tiny)
    assert calls and set(calls) == {(15.0, 0.15, 2.8)}


@pytest.mark.parametrize("fields, message", [
    ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adadelta, adam, not 'rmsprop'"),
    ({"schedule": "cosine"}, "schedule must be one of constant, onecycle, step"),
    ({"lr_gamma": 0.0}, "lr_gamma must be in (0, 1]"),
    ({"lr_gamma": 1.5}, "lr_gamma must be in (0, 1]"),
    ({"lr_gamma": float("nan")}, "lr_gamma must be a finite number"),
    ({"holdout": 1.0}, "holdout must be a fraction in [0, 1)"),
    ({"holdout": 6000}, "holdout must be a fraction in [0, 1)"),
    ({"holdout": -0.1}, "holdout must be a fraction in [0, 1)"),
    ({"holdout": True}, "holdout must be a finite number"),
    ({"holdout": 0.5, "limit_train": 1}, "holdout 0.5 of 1 training image(s) leaves none to train on"),
    ({"holdout": 1e-17, "limit_train": 100}, "leaves none held out"),
    ({"augment_degrees": 200.0}, "need 0 <= augment_degrees <= 180"),
    ({"augment_scale": 1.0}, "0 <= augment_scale < 1"),
    ({"augment_shift": -1.0}, "0 <= augment_shift < 28"),
    ({"augment_shift": float("inf")}, "augment_shift must be a finite number"),
])
def test_bad_values_of_the_new_fields_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_choices_are_declared_once():
    assert OPTIMIZERS == ("sgd", "adadelta", "adam") and SCHEDULES == ("constant", "onecycle", "step")
    assert {k: getattr(TrainConfig(), k) for k in NEW_FIELDS} == NEW_FIELDS


def test_configs_saved_before_the_new_fields_compare_equal_and_the_old_recipes_are_unchanged():
    for name in ("baseline", "improved", "baseline_relu", "baseline_bn", "residual"):
        assert not set(RECIPES[name]) & set(NEW_FIELDS)
        now = recipe(name).to_dict()
        saved = {k: v for k, v in now.items() if k not in NEW_FIELDS}  # as a metrics.json written before them
        assert comparable(saved) == comparable(now) and differing_fields(saved, now) == []
        assert differing_fields(saved, recipe(name, optimizer="adam").to_dict()) == ["optimizer"]


def test_checkpoints_of_the_peers_load(tmp_path, tiny):
    from labkit.checkpoint import load_checkpoint

    cfg = recipe("keras", epochs=1, limit_train=256, device="cpu")
    result = train_module.train_run(cfg, data=tiny, checkpoint=tmp_path / "k.pt")
    model, ckpt = load_checkpoint(tmp_path / "k.pt", expect="keras")
    x = tiny["x_test"][:5].float()
    torch.testing.assert_close(model(x), result["final_model"].eval()(x))
    assert isinstance(build_model("deotte"), DeotteCNN) and ckpt["config"]["holdout"] == 0.1


@pytest.mark.parametrize("name", PEERS)
def test_labkit_train_runs_each_peer(name, tmp_path, tiny, monkeypatch):
    from labkit.cli import main as cli_main

    monkeypatch.setattr(train_module, "mnist_tensors", lambda limit, device: tiny)  # 200 test images: seconds
    out = tmp_path / name
    assert cli_main(["train", "--model", name, "--epochs", "1", "--limit-train", "256", "--out", str(out),
                     "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"] == recipe(name, epochs=1, limit_train=256, device="cpu").to_dict()
    assert len(m["runs"]) == 1 and len(m["runs"][0]["epochs"]) == 1
