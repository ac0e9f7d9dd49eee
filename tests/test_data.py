import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from labkit.config import MNIST_DIR
from labkit.data import MAX_IDX_BYTES, DataError, load_mnist, parse_idx, read_bytes, read_idx, sha256_file


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
    assert exc.value.path == path and needle in exc.value.problem
    assert str(exc.value) == f"{path}: {exc.value.problem}"


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


def test_sha256_file_is_the_digest_of_the_decompressed_bytes(tmp_path):
    raw = write_idx(tmp_path / "x.gz", GOOD, 0x08, compress=True)
    assert sha256_file(tmp_path / "x.gz") == hashlib.sha256(raw).hexdigest()
    assert read_bytes(tmp_path / "x.gz") == raw
    name = "t10k-labels-idx1-ubyte"
    from labkit.data import MNIST_SHA256
    assert sha256_file(MNIST_DIR / f"{name}.gz") == MNIST_SHA256[name]


# ---------------------------------------------------------------------------------- bounded reads


def header(code, *shape):
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize("compress", [False, True])
def test_size_overflow_refused_with_the_real_figure(tmp_path, compress):
    # numpy's int64 product of (2**31, 2**31, 4) wraps to 0; the real figure is 2**64 bytes.
    path = tmp_path / "x.idx"
    raw = header(0x08, 2**31, 2**31, 4)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    declares = "header declares shape (2147483648, 2147483648, 4) of uint8 = 18,446,744,073,709,551,616 data bytes"
    assert declares in exc.value.problem
    # raw: the file's size is known and disagrees; gzip: refused for the limit before decompressing
    assert exc.value.problem.endswith("the file holds 0" if not compress else f"over the limit of {MAX_IDX_BYTES:,} bytes")


def test_size_overflow_in_parse_idx():
    with pytest.raises(DataError) as exc:
        parse_idx(header(0x0E, 2**32 - 1, 2**32 - 1) + b"\x00" * 8)
    assert exc.value.problem == ("truncated: header declares shape (4294967295, 4294967295) of float64 = "
                                 "147,573,952,520,956,936,200 data bytes, the file holds 8")


@pytest.mark.parametrize("ndim", [65, 255])
def test_more_than_64_dimensions_refused(tmp_path, ndim):
    path = tmp_path / "x.idx"
    path.write_bytes(header(0x08, *[1] * ndim) + b"\x07")  # a valid size: only the count is wrong
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert exc.value.problem == f"IDX header declares {ndim} dimensions; at most 64 are supported (numpy's limit)"


def test_64_dimensions_accepted(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(header(0x08, *[1] * 64) + b"\x07")
    arr = read_idx(path)
    assert arr.shape == (1,) * 64 and arr.ravel().tolist() == [7]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("extra,needle", [(-1, "truncated"), (1, "trailing data")])
def test_declared_size_disagrees_with_the_file(tmp_path, compress, extra, needle):
    body = np.arange(2 * 3 * 4, dtype=">i2").tobytes()  # 24 bytes for shape (2, 3, 4) of int16
    raw = header(0x0B, 2, 3, 4) + (body[:extra] if extra < 0 else body + b"\x00" * extra)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert exc.value.problem.startswith(needle)
    assert "header declares shape (2, 3, 4) of int16 = 48 data bytes" in exc.value.problem
    if not compress:
        assert f"the file holds {48 + extra}" in exc.value.problem
    elif extra < 0:
        assert "holds only 47 after the header" in exc.value.problem


@pytest.mark.parametrize("path,what", [("/dev/zero", "a character device"), (None, "a FIFO (named pipe)")])
def test_special_files_refused_without_reading(tmp_path, path, what):
    if path is None:
        path = tmp_path / "fifo-idx1-ubyte"
        os.mkfifo(path)  # opening it would block until a writer comes
    for read in (read_idx, read_bytes, sha256_file):
        with pytest.raises(DataError) as exc:
            read(path)
        assert str(exc.value) == f"{path}: is {what}, not an IDX file"


def gzip_of_zeros(path, head: bytes, mib: int) -> None:
    """A gzip file of `head` then `mib` MiB of zeros, written in a few ms: one deflate block of
    1 MiB of zeros, compressed once after a full flush (so it stands alone), repeated."""
    zero = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first)
        for _ in range(mib):
            f.write(block)
        f.write(c.flush(zlib.Z_FINISH))
        f.write(struct.pack("<II", crc, (len(head) + (mib << 20)) & 0xFFFFFFFF))


def test_gzip_of_zeros_is_a_valid_gzip(tmp_path):
    gzip_of_zeros(tmp_path / "z.gz", b"head", 3)
    assert gzip.decompress((tmp_path / "z.gz").read_bytes()) == b"head" + bytes(3 << 20)


# Peak memory of reading in a fresh interpreter: ru_maxrss (KiB on Linux) after minus before.
MEASURE = """
import resource, sys
from labkit.data import DataError, read_idx
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx(sys.argv[1])
except DataError as e:
    print(e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_gzip_bomb_refused_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb-images-idx3-ubyte.gz"
    gzip_of_zeros(bomb, header(0x08, 10, 28, 28), 200)  # 200 KB that inflates to 200 MiB
    assert bomb.stat().st_size < 1_000_000
    out = subprocess.run([sys.executable, "-c", MEASURE, str(bomb)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    message, grew_kib = out.stdout.splitlines()
    assert message == (f"{bomb}: trailing data: header declares shape (10, 28, 28) of uint8 = 7,840 data bytes, "
                       f"the decompressed data holds more (stopped reading at 7,841 bytes after the header)")
    assert int(grew_kib) < 20 * 1024  # decompressing it all would take 200 MiB


def test_gzip_declaring_more_than_the_limit_refused_before_decompressing(tmp_path, monkeypatch):
    path = tmp_path / "x.gz"
    gzip_of_zeros(path, header(0x08, 1000, 1000, 1000), 0)  # declares 10**9 bytes, holds none
    served = []
    readinto = gzip.GzipFile.readinto
    monkeypatch.setattr(gzip.GzipFile, "readinto", lambda self, b: served.append(readinto(self, b)) or served[-1])
    with pytest.raises(DataError) as exc:
        read_idx(path, max_bytes=10**9 - 1)
    assert sum(served) == 16  # the header, nothing after it
    assert exc.value.problem.endswith("= 1,000,000,000 data bytes, over the limit of 999,999,999 bytes")


def test_read_bytes_stops_past_its_limit(tmp_path):
    path = tmp_path / "z.gz"
    gzip_of_zeros(path, b"", 4)
    with pytest.raises(DataError, match="decompresses to more than 1,048,576 bytes"):
        read_bytes(path, max_bytes=1 << 20)
    with pytest.raises(DataError, match="decompresses to more than 1,048,576 bytes"):
        sha256_file(path, max_bytes=1 << 20)
    assert len(read_bytes(path, max_bytes=4 << 20)) == 4 << 20
