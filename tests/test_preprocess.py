"""labkit.preprocess: the report's pipeline exactly, the MNIST-style one on every kind of input."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import labkit.safeio
from labkit.synth import page_with_digit as page
from labkit.data import load_mnist
from labkit.preprocess import (MAX_IMAGE_BYTES, ImageError, center_of_mass, mnist_preprocess, open_image,
                               report_preprocess, to_28x28)


@pytest.fixture(scope="module")
def seven():
    """MNIST test image 0 (a 7), uint8 28x28, ink bright."""
    images, labels = load_mnist("test")
    assert labels[0] == 7
    return images[0]


def to_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def corr(a, b) -> float:
    """Correlation of two 28x28 pictures, the best over shifts of up to one pixel."""
    a, b = np.asarray(a, float), np.pad(np.asarray(b, float), 1)
    return max(float(np.corrcoef(a.ravel(), b[1 + dy:29 + dy, 1 + dx:29 + dx].ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def assert_mnist_like(out):
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0  # ink 255, empty border
    cy, cx = center_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    ys, xs = np.nonzero(out > 0)
    assert 17 <= max(np.ptp(ys) + 1, np.ptp(xs) + 1) <= 22  # fitted into 20x20 (+ anti-aliased edge)


@pytest.fixture(scope="module")
def reference(seven):
    g = page(seven)
    return mnist_preprocess(Image.fromarray(np.round(g * 255).astype(np.uint8), mode="L"))


# ---------------------------------------------------------------------------------- report's


def report_loop(img: Image.Image) -> np.ndarray:
    """The report's readImage, pixel loop and all."""
    image = img.convert("L")
    width, height = image.size
    pixel = image.load()
    for i in range(width):
        for j in range(height):
            if pixel[i, j] >= 100:
                pixel[i, j] = 0
            else:
                pixel[i, j] = 255 - pixel[i, j]
    if width != 28 or height != 28:
        image = image.resize((28, 28))
    return np.array(image)


@pytest.mark.parametrize("size", [(28, 28), (45, 31), (120, 90)])
def test_report_preprocess_is_the_reports_readimage(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")
    out = report_preprocess(to_bytes(img))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    np.testing.assert_array_equal(out, report_loop(img))


def test_preprocess_dispatch(seven):
    img = Image.fromarray(np.round(page(seven) * 255).astype(np.uint8))
    np.testing.assert_array_equal(to_28x28(img, "report"), report_preprocess(img))
    np.testing.assert_array_equal(to_28x28(img), mnist_preprocess(img))
    with pytest.raises(ValueError, match="method"):
        to_28x28(img, "nope")


# ---------------------------------------------------------------------------------- MNIST-style


def test_dark_ink_photo_is_cropped_fitted_and_centred(seven, reference):
    assert_mnist_like(reference)
    assert corr(reference, seven) > 0.85  # it looks like the MNIST digit it was made from


@pytest.mark.parametrize("at", [(0, 0), (150, 70), (5, 80)])
def test_position_does_not_matter(seven, reference, at):
    out = mnist_preprocess(Image.fromarray(np.round(page(seven, at=at) * 255).astype(np.uint8)))
    assert_mnist_like(out)
    assert corr(out, reference) > 0.97


def test_small_digit_in_a_large_frame(seven, reference):
    g = page(seven, size=(1200, 900), at=(700, 100), scale=3)
    out = mnist_preprocess(Image.fromarray(np.round(g * 255).astype(np.uint8)))
    assert_mnist_like(out)
    assert corr(out, reference) > 0.9


def test_polarity_light_on_dark_equals_dark_on_light(seven, reference):
    out = mnist_preprocess(Image.fromarray(np.round(page(seven, dark_ink=False) * 255).astype(np.uint8)))
    assert_mnist_like(out)
    assert corr(out, reference) > 0.97


def test_uneven_lighting(seven, reference):
    out = mnist_preprocess(Image.fromarray(np.round(page(seven, gradient=0.55) * 255).astype(np.uint8)))
    assert_mnist_like(out)
    assert corr(out, reference) > 0.95


def test_specks_are_ignored(seven, reference):
    g = page(seven)
    g[5:8, 280:283] = 0.1  # a dot of dirt far from the digit
    g[200:202, 10:12] = 0.1
    out = mnist_preprocess(Image.fromarray(np.round(g * 255).astype(np.uint8)))
    assert corr(out, reference) > 0.97


def _modes(g: np.ndarray) -> dict[str, Image.Image]:
    u8 = np.round(g * 255).astype(np.uint8)
    rgb = np.stack([u8, u8, np.clip(u8.astype(int) + 20, 0, 255).astype(np.uint8)], -1)
    ink = 1 - g  # coverage
    rgba = np.zeros(g.shape + (4,), np.uint8)  # black ink on a transparent background, RGB 0 there
    rgba[..., 3] = np.round(np.clip((ink - 0.08) / 0.8, 0, 1) * 255).astype(np.uint8)
    la = np.stack([np.zeros_like(u8), rgba[..., 3]], -1)
    return {
        "L": Image.fromarray(u8, mode="L"),
        "RGB": Image.fromarray(rgb, mode="RGB"),
        "RGBA": Image.fromarray(rgba, mode="RGBA"),
        "LA": Image.fromarray(la, mode="LA"),
        "P": Image.fromarray(rgb, mode="RGB").quantize(16),
        "I;16": Image.fromarray((g * 65535).astype(np.uint16)),
        "I": Image.fromarray((g * 65535).astype(np.int32), mode="I"),
        "F": Image.fromarray(g.astype(np.float32), mode="F"),
        "1": Image.fromarray(u8 > 128).convert("1"),
        "CMYK": Image.fromarray(rgb, mode="RGB").convert("CMYK"),
    }


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
def test_every_image_mode(seven, reference, mode):
    img = _modes(page(seven))[mode]
    assert img.mode == mode
    out = mnist_preprocess(img)
    assert_mnist_like(out)
    assert corr(out, reference) > 0.9
    if mode in ("L", "RGB", "RGBA", "LA", "P", "I;16"):  # and through a PNG file of that mode
        data = to_bytes(img)
        assert Image.open(io.BytesIO(data)).mode == mode
        assert corr(mnist_preprocess(data), reference) > 0.9


def test_rgba_transparent_background_is_white_not_black(seven, reference):
    img = _modes(page(seven))["RGBA"]
    assert np.asarray(img)[..., :3].max() == 0  # RGB all black: only alpha draws the digit
    out = mnist_preprocess(img)
    assert corr(out, reference) > 0.9
    assert report_preprocess(img).min() == 255  # the report ignores alpha: all black -> a solid square


def test_white_strokes_on_transparent_background(seven, reference):
    rgba = np.asarray(_modes(page(seven))["RGBA"]).copy()
    rgba[..., :3] = 255  # white ink, only alpha draws the digit: over white it would vanish
    out = mnist_preprocess(Image.fromarray(rgba, mode="RGBA"))
    assert corr(out, reference) > 0.9


@pytest.mark.parametrize("orientation,stored", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                                (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation(seven, reference, orientation, stored):
    upright = Image.fromarray(np.round(page(seven) * 255).astype(np.uint8)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = to_bytes(upright.transpose(stored), "JPEG", quality=90, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    out = mnist_preprocess(data)
    assert corr(out, reference) > 0.95
    no_tag = mnist_preprocess(upright.transpose(stored))  # same pixels without the tag: sideways
    assert corr(no_tag, reference) < 0.6


def test_inputs_path_bytes_file_object_and_image_agree(tmp_path, seven, reference):
    img = Image.fromarray(np.round(page(seven) * 255).astype(np.uint8))
    path = tmp_path / "7.png"
    img.save(path)
    with open(path, "rb") as f:
        from_file = mnist_preprocess(f)
    for out in (mnist_preprocess(path), mnist_preprocess(str(path)), mnist_preprocess(path.read_bytes()),
                mnist_preprocess(memoryview(path.read_bytes())), from_file):
        np.testing.assert_array_equal(out, reference)


def test_already_mnist_sized_digit(seven):
    out = mnist_preprocess(Image.fromarray(255 - seven))  # an MNIST digit drawn dark on light
    assert_mnist_like(out)
    assert corr(out, seven) > 0.9


def test_huge_photo(seven, reference):
    # Timings of this and of a typical photo: benchmarks/preprocess_speed.py (printed, not asserted).
    g = page(seven, size=(4000, 3000), at=(1500, 1000), scale=40)
    huge = to_bytes(Image.fromarray(np.round(g * 255).astype(np.uint8)).convert("RGB"), "JPEG", quality=80)
    out = mnist_preprocess(huge)
    assert_mnist_like(out)
    assert corr(out, reference) > 0.9


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (200, 150), 230),
    lambda: Image.new("RGB", (64, 64), (0, 0, 0)),
    lambda: Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
    lambda: Image.fromarray(np.clip(np.random.default_rng(1).normal(200, 3, (150, 200)), 0, 255).astype(np.uint8)),
])
def test_blank_image_is_an_error_not_a_guess(make):
    with pytest.raises(ImageError, match="blank image"):
        mnist_preprocess(to_bytes(make()), name="blank.png")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image") as e:
        mnist_preprocess(p)
    assert str(p) in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as e:
        to_28x28(p)
    assert "empty.jpg" in str(e.value)
    with pytest.raises(ImageError, match="empty file"):
        to_28x28(p, "report")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(seven, fmt):
    data = to_bytes(Image.fromarray(np.round(page(seven) * 255).astype(np.uint8)), fmt)
    with pytest.raises(ImageError, match="truncated") as e:
        mnist_preprocess(data[: len(data) // 2], name=f"cut.{fmt.lower()}")
    assert f"cut.{fmt.lower()}" in str(e.value)


def test_truncated_pil_image_opened_by_the_caller(tmp_path, seven):
    p = tmp_path / "cut.png"
    data = to_bytes(Image.fromarray(np.round(page(seven) * 255).astype(np.uint8)))
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        mnist_preprocess(Image.open(p))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        mnist_preprocess(tmp_path / "nothere.png")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (no pixel data): cheap to make, huge if decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_declared_by_header():
    with pytest.raises(ImageError, match="too large to decode safely") as e:
        mnist_preprocess(png_header_only(100_000, 100_000), name="bomb.png")
    assert "bomb.png" in str(e.value)
    with pytest.raises(ImageError, match="too large"):
        report_preprocess(png_header_only(100_000, 100_000), name="bomb.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decompression_bomb_message_gives_the_real_size(fmt):
    # The image's own size from its header, the limit stated apart (not Pillow's limit as the size).
    data = png_header_only(30_000, 30_000) if fmt == "PNG" else jpeg_header_only(30_000, 30_000)
    with pytest.raises(ImageError) as e:
        open_image(data, name="bomb")
    msg = str(e.value)
    assert msg.startswith("bomb: ") and "30000x30000 = 900,000,000 pixels" in msg
    assert f"limit is {Image.MAX_IMAGE_PIXELS:,} pixels" in msg
    assert f"{2 * Image.MAX_IMAGE_PIXELS:,}" not in msg


def jpeg_header_only(width: int, height: int) -> bytes:
    """The first bytes of a baseline JPEG declaring width x height (SOF0), no scan data."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def test_decompression_bomb_warning_is_an_error_too(monkeypatch, seven):
    data = to_bytes(Image.fromarray(np.round(page(seven, size=(100, 100), at=(0, 0), scale=3) * 255).astype(np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # 10,000 pixels: over the limit, under twice it
    with pytest.raises(ImageError, match="too large to decode safely"):
        mnist_preprocess(data, name="big.png")


# ---------------------------------------------------------------------------------- bounded reads


@pytest.fixture
def no_reading(monkeypatch):
    """Make any read of a file's contents through labkit.safeio fail the test."""
    def refuse(*a, **k):
        raise AssertionError("the file's contents were read")
    monkeypatch.setattr(labkit.safeio, "read_at_most", refuse)


def test_fifo_refused_without_opening(tmp_path, no_reading):
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: it must not be opened
    with pytest.raises(ImageError) as e:
        mnist_preprocess(fifo)
    assert str(e.value) == f"{fifo}: is a FIFO (named pipe), not an image file"


def test_character_device_refused(no_reading):
    with pytest.raises(ImageError) as e:
        to_28x28("/dev/zero")
    assert str(e.value) == "/dev/zero: is a character device, not an image file"


def test_directory_refused(tmp_path):
    with pytest.raises(ImageError) as e:
        mnist_preprocess(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a directory, not an image file"


def test_oversize_file_refused_before_reading(tmp_path, no_reading):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(10 * MAX_IMAGE_BYTES + 3)  # sparse: costs no disk, and must cost no reading
    with pytest.raises(ImageError) as e:
        mnist_preprocess(big)
    assert str(e.value) == (f"{big}: {10 * MAX_IMAGE_BYTES + 3:,} bytes, over the limit of "
                            f"{MAX_IMAGE_BYTES:,} bytes")


def test_file_at_the_limit_is_read(tmp_path, seven, reference, monkeypatch):
    img = Image.fromarray(np.round(page(seven) * 255).astype(np.uint8))
    path = tmp_path / "7.png"
    img.save(path)
    size = path.stat().st_size
    monkeypatch.setattr("labkit.preprocess.MAX_IMAGE_BYTES", size)
    np.testing.assert_array_equal(mnist_preprocess(path), reference)
    monkeypatch.setattr("labkit.preprocess.MAX_IMAGE_BYTES", size - 1)
    with pytest.raises(ImageError, match=f"{size:,} bytes, over the limit of {size - 1:,} bytes"):
        mnist_preprocess(path)


def test_bytes_over_the_limit_refused():
    data = memoryview(bytearray(MAX_IMAGE_BYTES + 1))  # what an upload hands PredictPanel
    with pytest.raises(ImageError) as e:
        mnist_preprocess(data, name="upload.png")
    assert str(e.value) == f"upload.png: {MAX_IMAGE_BYTES + 1:,} bytes, over the limit of {MAX_IMAGE_BYTES:,} bytes"


class Endless(io.RawIOBase):
    """A binary stream of zeros that never ends, counting what was read."""

    def __init__(self):
        self.served = 0

    def readable(self):
        return True

    def readinto(self, b):
        b[:] = bytes(len(b))
        self.served += len(b)
        return len(b)


def test_endless_file_object_read_at_most_one_byte_over():
    stream = Endless()
    with pytest.raises(ImageError, match="over the limit"):
        mnist_preprocess(stream, name="stream")
    assert stream.served == MAX_IMAGE_BYTES + 1


def test_labkit_predict_refuses_fifo_and_dev_zero_at_once(tmp_path):
    # End to end, in a subprocess: reading /dev/zero would exhaust memory and opening the FIFO would
    # hang, so either mistake shows as the timeout (a guard against hanging, not a speed limit).
    import subprocess
    import sys

    fifo = tmp_path / "3.png"
    os.mkfifo(fifo)
    out = subprocess.run([sys.executable, "-m", "labkit", "predict", str(fifo), "/dev/zero"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert f"{fifo}: error: is a FIFO (named pipe), not an image file" in lines
    assert "/dev/zero: error: is a character device, not an image file" in lines
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_corrupt_exif_is_read_upright_the_same_way_by_prediction_and_view(seven, reference):
    """A JPEG whose EXIF block Pillow cannot rewrite (a tag of the wrong type) is still turned by
    its orientation tag, by the pipeline and by the view of it alike (one reader, read_upright)."""
    from PIL import ImageOps

    from helpers import corrupt_exif_jpegs
    from labkit.preprocess import as_viewed, read_upright

    upright = Image.fromarray(np.round(page(seven) * 255).astype(np.uint8))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes
    for name, data in corrupt_exif_jpegs(stored).items():
        broken = Image.open(io.BytesIO(data))
        with pytest.raises((TypeError, struct.error)):  # the failure read_upright guards against
            ImageOps.exif_transpose(broken)
        img, _, size = read_upright(data, name)
        assert img.size == size == upright.size, name
        assert as_viewed(data, name).size == upright.size
        assert corr(mnist_preprocess(data, name), reference) > 0.95, name


@pytest.mark.parametrize("size, words", [((100_000, 1), "image of 100000x1 pixels is too small"),
                                         ((100_000, 3), "image of 100000x3 pixels is too narrow"),
                                         ((1, 5), "image of 1x5 pixels is too small")])
def test_too_small_names_the_files_size(size, words):
    data = to_bytes(Image.new("L", size, 255))
    with pytest.raises(ImageError) as e:
        mnist_preprocess(data, name="thin.png")
    assert str(e.value).startswith(f"thin.png: {words}") and "\n" not in str(e.value)
