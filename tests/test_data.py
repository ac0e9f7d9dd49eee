import gzip
import shutil
import struct

import numpy as np
import pytest

from labkit.config import MNIST_DIR
from labkit.data import DataError, load_mnist, read_idx


def write_idx(path, arr, code, compress=False):
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return raw


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, code, compress):
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / "x.idx"
    write_idx(path, arr, code, compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, arr)


GOOD = np.arange(12, dtype=np.uint8).reshape(3, 4)
GOOD_RAW = struct.pack(">HBB", 0, 8, 2) + struct.pack(">2I", 3, 4) + GOOD.tobytes()


@pytest.mark.parametrize("content,needle", [
    (b"", "empty file"),
    (b"\x00\x00", "too short"),
    (b"GIF89a" + b"\x00" * 40, "not an IDX file"),
    (struct.pack(">HBB", 0, 0x07, 2) + b"\x00" * 20, "unknown IDX type code 0x07"),
    (struct.pack(">HBB", 0, 8, 0), "0 dimensions"),
    (struct.pack(">HBB", 0, 8, 3) + b"\x00\x00\x00\x03", "truncated header"),
    (GOOD_RAW[:-5], "truncated"),
    (GOOD_RAW + b"\x00\x01", "trailing data"),
    (gzip.compress(GOOD_RAW)[:-12], "gzip"),
    (b"\x1f\x8b" + b"garbage" * 5, "gzip"),
])
def test_broken_idx_names_file_and_problem(tmp_path, content, needle):
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert isinstance(exc.value, ValueError)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.idx")


def test_load_mnist_shapes_and_known_counts():
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.shape == (60000,) and y.dtype == np.uint8
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y[0] == 5


def test_load_mnist_rejects_wrong_checksum(tmp_path):
    for f in MNIST_DIR.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").copy()
    labels[0] = (labels[0] + 1) % 10  # a well-formed file with one label changed
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x08, compress=True)
    with pytest.raises(DataError, match="SHA-256") as exc:
        load_mnist("test", root=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(exc.value)


def test_load_mnist_bad_split():
    with pytest.raises(ValueError, match="train"):
        load_mnist("validation")
