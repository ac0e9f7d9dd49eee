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
