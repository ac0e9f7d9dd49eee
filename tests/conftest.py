import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the report's loop, a reference for the tests


@pytest.fixture(scope="session")
def small_data():
    """MNIST tensors with a 2,000-image training subset (CPU)."""
    from labkit.train import mnist_tensors

    return mnist_tensors(limit_train=2000, device="cpu")


@pytest.fixture
def no_kernel(monkeypatch):
    """SeedCNN without its compiled kernel: torch's conv2d + max_pool2d, fc1 and fc2 through W2 @ W1."""
    from labkit import fastpath

    monkeypatch.setattr(fastpath, "_tried", True)
    monkeypatch.setattr(fastpath, "_lib", None)
