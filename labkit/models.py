"""BaselineCNN (the report's Net) and its ablation variants, the improved model and its residual variant,
the peers (the networks of pytorch/examples, the Keras example and Chris Deotte), and a name -> model registry."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fastpath
from .config import MODEL_NAMES


class BaselineCNN(nn.Module):
    """The report's Net layer for layer (same state-dict keys): conv, pool, two linears, no activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=16, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=2),
        )
        self.fc = nn.Sequential(nn.Linear(16 * 14 * 14, 128), nn.Linear(128, 10))

    def forward(self, x):  # (B, 1, 28, 28) float
        """The report's function, computed faster (labkit/fastpath.py; benchmarks/NOTES.md has figures)."""
        conv, fc1, fc2 = self.conv[0], self.fc[0], self.fc[1]
        if fastpath.usable(x, conv.weight):  # CPU: conv + pool in one kernel, no 28x28 map in memory
            h = torch.ops.labkit.conv_pool(x, conv.weight, conv.bias)  # (B, 16, 14, 14), channels-last memory
            h = h.permute(0, 2, 3, 1).flatten(1)  # (B, 3136) in (H, W, C) order: a view, no copy
            return fastpath.linear_chain(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias, channels_last=True)  # (B, 10)
        h = self.conv(x).flatten(1)  # (B, 3136)
        return fastpath.linear_chain(h, fc1.weight, fc1.bias, fc2.weight, fc2.bias)  # (B, 10)

    def forward_reference(self, x):
        """The report's forward, verbatim."""
        out = self.conv(x)  # (B, 16, 14, 14)
        out = out.view(out.size(0), -1)  # (B, 3136)
        return self.fc(out)  # (B, 10)


class BaselineReLU(BaselineCNN):
    """The report's Net with a ReLU after the pooled convolution and between its linear layers (ablation rung)."""

    def forward(self, x):  # (B, 1, 28, 28) float
        conv, fc1, fc2 = self.conv[0], self.fc[0], self.fc[1]
        if fastpath.usable(x, conv.weight):  # max-pool and ReLU commute: ReLU(pool(conv)) is pool(ReLU(conv))
            h = torch.ops.labkit.conv_pool(x, conv.weight, conv.bias).flatten(1)  # (B, 3136), NHWC memory
        else:
            h = self.conv(x).flatten(1)  # (B, 3136)
        return fc2(torch.relu(fc1(torch.relu(h))))  # (B, 10)

    def forward_reference(self, x):
        """Plain torch layers: conv, ReLU, pool, linear, ReLU, linear."""
        h = self.conv[1](torch.relu(self.conv[0](x))).flatten(1)  # (B, 3136)
        return self.fc[1](torch.relu(self.fc[0](h)))


class BaselineBN(nn.Module):
    """BaselineReLU with BatchNorm after the convolution (ablation rung): conv, BN, ReLU, pool, linear, ReLU, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(kernel_size=2))
        self.fc = nn.Sequential(nn.Linear(16 * 14 * 14, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):  # (B, 1, 28, 28)
        return self.fc(self.conv(x).flatten(1))  # (B, 10)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImprovedCNN(nn.Module):
    """ReLU/BatchNorm CNN that never computes a 28x28 feature map: a stride-2 5x5 stem, then 14x14 and 7x7."""

    channels_last = True  # trains faster in NHWC memory on CPU (labkit.train)

    def __init__(self, c1: int = 32, c2: int = 64, c3: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, c1, 5, stride=2),  # (B, c1, 14, 14)
            _conv_bn(c1, c2),  # (B, c2, 14, 14)
            nn.MaxPool2d(2),  # (B, c2, 7, 7)
            _conv_bn(c2, c3),  # (B, c3, 7, 7)
        )
        self.head = nn.Linear(c3, 10)

    def forward(self, x):  # (B, 1, 28, 28) normalised
        h = self.features(x)  # (B, c3, 7, 7)
        return self.head(h.amax(dim=(2, 3)))  # (B, 10): global max pool


class _Residual(nn.Module):
    """conv3x3-BN beside a 1x1 conv-BN shortcut, summed, then ReLU (ResNet's projection shortcut)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))


class ResidualCNN(ImprovedCNN):
    """ImprovedCNN with residual connections: each 3x3 layer gains a 1x1 projection shortcut (about 11 % more
    multiply-adds), the residual connections the report's conclusion proposes."""

    def __init__(self, c1: int = 32, c2: int = 64, c3: int = 128):
        super().__init__(c1, c2, c3)
        self.features = nn.Sequential(
            _conv_bn(1, c1, 5, stride=2),  # (B, c1, 14, 14)
            _Residual(c1, c2),  # (B, c2, 14, 14)
            nn.MaxPool2d(2),  # (B, c2, 7, 7)
            _Residual(c2, c3),  # (B, c3, 7, 7)
        )


class ExamplesCNN(nn.Module):
    """pytorch/examples' mnist/main.py Net, layer for layer (same state-dict keys): conv32, conv64, max-pool,
    dropout 0.25, fc128, dropout 0.5, fc10. It returns logits where the source returns their log_softmax:
    cross-entropy on logits is the source's NLL loss on log_softmax, and the argmax is the same."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):  # (B, 1, 28, 28) MNIST-normalised
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)  # (B, 64, 12, 12)
        h = F.relu(self.fc1(self.dropout1(h).flatten(1)))  # (B, 128)
        return self.fc2(self.dropout2(h))  # (B, 10)


def _keras_init(model: nn.Module) -> nn.Module:
    """Keras' default initialisation: Glorot-uniform kernels and zero biases in every conv and dense layer."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class KerasCNN(nn.Module):
    """keras-io's "Simple MNIST convnet": conv32-pool-conv64-pool-flatten-dropout 0.5-dense10 (34,826 parameters),
    with Keras' initialisation. It takes raw 0-255 pixels and scales them to [0, 1], as the example does."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 13, 13)
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 5, 5)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 5 * 5, 10))
        _keras_init(self)

    def forward(self, x):  # (B, 1, 28, 28) raw 0-255
        return self.head(self.features(x / 255))  # (B, 10)


def _keras_conv_bn(cin: int, cout: int, k: int, stride2_same: bool = False) -> nn.Sequential:
    """Keras' Conv2D(activation="relu") then BatchNormalization() with Keras' defaults (momentum 0.99, which is
    torch's 0.01, and epsilon 1e-3). stride2_same: strides=2, padding="same" as TensorFlow pads a 5x5 kernel on
    an even size: one row and column before, two after."""
    pad = [nn.ZeroPad2d((1, 2, 1, 2))] if stride2_same else []
    return nn.Sequential(*pad, nn.Conv2d(cin, cout, k, stride=2 if stride2_same else 1), nn.ReLU(),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))


class DeotteCNN(nn.Module):
    """Chris Deotte's CNN (github.com/cdeotte/MNIST-CNN-99.75, CNN.ipynb), layer for layer:
    [32C3-32C3-32C5S2]-[64C3-64C3-64C5S2]-128C4-10, BatchNorm after every ReLU, dropout 0.4 after each block and
    before the dense layer, Keras' initialisation. It takes raw 0-255 pixels and scales them to [0, 1], as he does."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            _keras_conv_bn(1, 32, 3),  # (B, 32, 26, 26)
            _keras_conv_bn(32, 32, 3),  # (B, 32, 24, 24)
            _keras_conv_bn(32, 32, 5, stride2_same=True),  # (B, 32, 12, 12)
            nn.Dropout(0.4),
            _keras_conv_bn(32, 64, 3),  # (B, 64, 10, 10)
            _keras_conv_bn(64, 64, 3),  # (B, 64, 8, 8)
            _keras_conv_bn(64, 64, 5, stride2_same=True),  # (B, 64, 4, 4)
            nn.Dropout(0.4),
            _keras_conv_bn(64, 128, 4),  # (B, 128, 1, 1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.4), nn.Linear(128, 10))
        _keras_init(self)

    def forward(self, x):  # (B, 1, 28, 28) raw 0-255
        return self.head(self.features(x / 255))  # (B, 10)


MODELS = dict(zip(MODEL_NAMES, (BaselineCNN, ImprovedCNN, BaselineReLU, BaselineBN, ResidualCNN,
                                ExamplesCNN, KerasCNN, DeotteCNN)))  # names from config


def build_model(name: str) -> nn.Module:
    """A fresh, randomly initialised model by registry name."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, not {name!r}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(model: nn.Module, input_shape=(1, 1, 28, 28)) -> str:
    """Layer by layer: name, type, output shape, parameters (a forward pass on zeros, in eval mode)."""
    rows, hooks = [], []
    for name, module in model.named_modules():
        if name and not list(module.children()):  # leaves only
            hooks.append(module.register_forward_hook(
                lambda m, _, out, name=name: rows.append((name, type(m).__name__, tuple(out.shape[1:]),
                                                          sum(p.numel() for p in m.parameters())))))
    # The baseline's fast forward bypasses its conv and pool modules: its verbatim forward calls each layer.
    forward = getattr(model, "forward_reference", model)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)  # the probe goes where the weights are (CUDA, CPU)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            forward(torch.zeros(input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    lines = [f"{type(model).__name__}", f"{'layer':<14} {'type':<12} {'output shape':<16} {'parameters':>10}"]
    lines += [f"{n:<14} {t:<12} {str(shape):<16} {k:>10,}" for n, t, shape, k in rows]
    lines.append(f"{'total':<44} {count_parameters(model):>10,}")
    return "\n".join(lines)
