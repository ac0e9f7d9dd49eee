"""IDX reader, MNIST loader with checksums, and the data error."""
from __future__ import annotations

import functools
import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from .config import MNIST_DIR

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the decompressed canonical files (also in data/mnist/SHA256SUMS).
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}


class DataError(ValueError):
    """A data file is missing, corrupt, truncated or not what it claims to be."""

    def __init__(self, path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (detected by content, not name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, not an IDX file") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(path, f"corrupt or truncated gzip data ({e})") from None
    return raw


def parse_idx(buf: bytes, path="<bytes>") -> np.ndarray:
    """Decode IDX bytes to an array, checking magic, type code, dimensions and length."""
    if len(buf) == 0:
        raise DataError(path, "empty file (expected an IDX header)")
    if len(buf) < 4:
        raise DataError(path, f"only {len(buf)} bytes, too short for an IDX magic number")
    zero, type_code, ndim = struct.unpack(">HBB", buf[:4])
    if zero != 0:
        raise DataError(path, f"not an IDX file: magic number 0x{buf[:4].hex()} does not start with two zero bytes")
    if type_code not in IDX_DTYPES:
        raise DataError(path, f"unknown IDX type code 0x{type_code:02x} (expected one of "
                              f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})")
    if ndim == 0:
        raise DataError(path, "IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(path, f"truncated header: {ndim} dimensions need {header} bytes, file has {len(buf)}")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(buf) - header
    if actual < expected:
        raise DataError(path, f"truncated: header says shape {shape} ({expected:,} data bytes), "
                              f"file holds {actual:,}")
    if actual > expected:
        raise DataError(path, f"{actual - expected:,} bytes of trailing data after shape {shape} "
                              f"({expected:,} data bytes)")
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read any IDX file, gzip or raw; raises DataError naming the file on any defect."""
    return parse_idx(read_bytes(path), path)


def sha256_file(path) -> str:
    """SHA-256 of the file's decompressed bytes."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def _mnist_path(name: str, root: Path) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.exists():
            return candidate
    raise DataError(root / f"{name}.gz", "MNIST file not found (expected it in data/mnist/, committed with the repo)")


@functools.lru_cache(maxsize=4)
def _load(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, ndim in zip(MNIST_FILES[split], (3, 1)):
        path = _mnist_path(name, root)
        buf = read_bytes(path)
        digest = hashlib.sha256(buf).hexdigest()
        if digest != MNIST_SHA256[name]:
            raise DataError(path, f"SHA-256 of the decompressed data is {digest}, expected {MNIST_SHA256[name]}")
        arr = parse_idx(buf, path)
        if arr.ndim != ndim or arr.dtype != np.uint8:
            raise DataError(path, f"expected uint8 with {ndim} dimensions, got {arr.dtype} {arr.shape}")
        arr.flags.writeable = False  # cached and shared: callers copy before changing
        arrays.append(arr)
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(root, f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_mnist(split: str, root=None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of split "train" or "test", checksum-verified."""
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return _load(split, Path(root) if root is not None else MNIST_DIR)


def mnist_checksums(root=None) -> dict[str, str]:
    """The verified SHA-256 of each MNIST file (loading verifies them)."""
    load_mnist("train", root), load_mnist("test", root)
    return dict(MNIST_SHA256)
