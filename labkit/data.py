"""IDX reader, MNIST loader with checksums, MNIST as tensors, and the data error."""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .config import MNIST_DIR
from .safeio import CHUNK, ReadRefused, open_regular, read_at_most

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_DIMS = 64  # numpy's limit on an array's dimensions
MAX_IDX_BYTES = 1 << 30  # data bytes an IDX file may declare (MNIST's largest holds 47,040,000)
MNIST_MAX_BYTES = 16 + 60_000 * 28 * 28  # the largest canonical MNIST file, header included

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


def _refused(path, e: ReadRefused) -> DataError:
    return DataError(path, e.problem)


def _gzip_error(path, e: Exception) -> DataError:
    return DataError(path, f"corrupt or truncated gzip data ({str(e) or type(e).__name__})")


class _Content:
    """The decompressed content of an IDX file (gzip detected by its magic bytes, not its name)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.raw, st = open_regular(self.path, "an IDX file")
        except ReadRefused as e:
            raise _refused(self.path, e) from None
        try:
            self.gzip = self.raw.read(2) == b"\x1f\x8b"
            self.raw.seek(0)
        except OSError as e:
            self.raw.close()
            raise DataError(self.path, f"cannot read the file ({e.strerror or e})") from None
        # Total content size when it is known without decompressing (None for gzip).
        self.size = None if self.gzip else st.st_size
        self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzip else self.raw

    def readinto(self, view) -> int:
        """Fill `view` as far as the content goes; the number of bytes read."""
        n = 0
        try:
            while n < len(view):
                got = self.stream.readinto(view[n:n + CHUNK])
                if not got:
                    break
                n += got
        except (EOFError, zlib.error) as e:
            raise _gzip_error(self.path, e) from None
        except OSError as e:  # gzip.BadGzipFile is an OSError too
            if self.gzip:
                raise _gzip_error(self.path, e) from None
            raise DataError(self.path, f"cannot read the file ({e.strerror or e})") from None
        return n

    def read(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[:self.readinto(memoryview(buf))])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
        self.raw.close()


def read_bytes(path, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """The file's bytes, gunzipped when it is gzip (detected by content, not name); DataError past
    max_bytes of content, never decompressing more than max_bytes + 1."""
    with _Content(path) as c:
        if c.size is not None and c.size > max_bytes:
            raise DataError(path, f"{c.size:,} bytes, over the limit of {max_bytes:,} bytes")
        data = read_at_most(c, max_bytes)
    if len(data) > max_bytes:
        raise DataError(path, f"decompresses to more than {max_bytes:,} bytes, over the limit")
    return data


def _declared(shape, dtype) -> str:
    return f"header declares shape {tuple(shape)} of {dtype.name} = {math.prod(shape) * dtype.itemsize:,} data bytes"


def _decode(src, path, size: int | None, max_bytes: int) -> np.ndarray:
    """IDX array from `src` (.read(n) -> bytes, .readinto(view) -> n); `size`: the content's total
    length when known (raw files, bytes), else None (gzip: read at most the declared size + 1)."""
    head = src.read(4)
    if len(head) == 0:
        raise DataError(path, "empty file (expected an IDX header)")
    if len(head) < 4:
        raise DataError(path, f"only {len(head)} bytes, too short for an IDX magic number")
    zero, type_code, ndim = struct.unpack(">HBB", head)
    if zero != 0:
        raise DataError(path, f"not an IDX file: magic number 0x{head.hex()} does not start with two zero bytes")
    if type_code not in IDX_DTYPES:
        raise DataError(path, f"unknown IDX type code 0x{type_code:02x} (expected one of "
                              f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})")
    if ndim == 0:
        raise DataError(path, "IDX header declares 0 dimensions")
    if ndim > MAX_IDX_DIMS:
        raise DataError(path, f"IDX header declares {ndim} dimensions; at most {MAX_IDX_DIMS} are supported (numpy's limit)")
    header = 4 + 4 * ndim
    dims = src.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(path, f"truncated header: {ndim} dimensions need {header} bytes, "
                              f"file has {4 + len(dims) if size is None else size}")
    shape = struct.unpack(f">{ndim}I", dims)  # Python ints: their product cannot overflow
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    if size is not None:  # the whole length is known: compare before reading anything more
        actual = size - header
        if actual < expected:
            raise DataError(path, f"truncated: {_declared(shape, dtype)}, the file holds {actual:,}")
        if actual > expected:
            raise DataError(path, f"trailing data: {_declared(shape, dtype)}, the file holds {actual:,} "
                                  f"({actual - expected:,} too many)")
    if expected > max_bytes:
        raise DataError(path, f"{_declared(shape, dtype)}, over the limit of {max_bytes:,} bytes")
    data = np.empty(expected + 1, dtype=np.uint8)  # one byte more tells "too long" without reading on
    got = src.readinto(memoryview(data))
    if got < expected:
        raise DataError(path, f"truncated: {_declared(shape, dtype)}, the decompressed data holds only "
                              f"{got:,} after the header")
    if got > expected:
        raise DataError(path, f"trailing data: {_declared(shape, dtype)}, the decompressed data holds more "
                              f"(stopped reading at {expected + 1:,} bytes after the header)")
    arr = data[:expected].view(dtype).reshape(shape)
    return arr if dtype.isnative or dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def parse_idx(buf: bytes, path="<bytes>", max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Decode IDX bytes to an array, checking magic, type code, dimensions and length."""
    return _decode(io.BytesIO(buf), path, len(buf), max_bytes)


def read_idx(path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read any IDX file, gzip or raw; raises DataError naming the file on any defect.

    Memory stays within the declared size: a gzip stream is decompressed only up to the size its
    header declares plus one byte, and a header declaring more than max_bytes is refused unread.
    """
    with _Content(path) as c:
        return _decode(c, c.path, c.size, max_bytes)


def sha256_file(path, max_bytes: int = MAX_IDX_BYTES) -> str:
    """SHA-256 of the file's decompressed bytes (read in chunks; DataError past max_bytes)."""
    h, n = hashlib.sha256(), 0
    buf = bytearray(CHUNK)
    with _Content(path) as c:
        while True:
            got = c.readinto(memoryview(buf))
            if not got:
                break
            n += got
            if n > max_bytes:
                raise DataError(path, f"decompresses to more than {max_bytes:,} bytes, over the limit")
            h.update(memoryview(buf)[:got])
    return h.hexdigest()


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
        buf = read_bytes(path, max_bytes=MNIST_MAX_BYTES)  # a tampered file is refused past the real size
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


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of the training pixels scaled to [0, 1]


def mnist_tensors(limit_train: int | None = None, device="cpu") -> dict:
    """MNIST as uint8 image tensors (N, 1, 28, 28) and int64 labels on `device`."""
    import torch

    out = {}
    for split in ("train", "test"):
        images, labels = load_mnist(split)
        if split == "train" and limit_train is not None:
            if not 0 < limit_train <= len(images):
                raise ValueError(f"limit_train must be in 1..{len(images)}, got {limit_train}")
            images, labels = images[:limit_train], labels[:limit_train]
        out[f"x_{split}"] = torch.tensor(images).unsqueeze(1).to(device)  # (N, 1, 28, 28) uint8
        out[f"y_{split}"] = torch.tensor(labels, dtype=torch.long).to(device)
    return out


def to_input(x_uint8, normalize: bool):
    """uint8 pixels -> the float input a model expects (raw 0-255, or MNIST-normalised)."""
    x = x_uint8.float()
    return (x / 255 - MNIST_MEAN) / MNIST_STD if normalize else x
