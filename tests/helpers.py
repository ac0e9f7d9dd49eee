"""Helpers shared by the tests (pytest puts tests/ on sys.path: `from helpers import ...`)."""
from __future__ import annotations

import io
import math
import struct
import zlib

from PIL import Image

from labkit.config import CUSTOM_DIR

IMAGES = sorted(p for p in CUSTOM_DIR.iterdir() if p.suffix in (".png", ".jpg"))  # the committed custom set


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height: a decompression bomb, cheap to make."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def bad_image_files(tmp_path) -> dict:
    """One file of each kind a user may hand `labkit predict` by mistake, by kind."""
    files = {"not_image": tmp_path / "notes.png", "empty": tmp_path / "empty.jpg",
             "truncated": tmp_path / "cut.png", "blank": tmp_path / "blank.png", "bomb": tmp_path / "bomb.png",
             "missing": tmp_path / "missing.png"}
    files["not_image"].write_text("not a picture")
    files["empty"].write_bytes(b"")
    png = next(p for p in IMAGES if p.suffix == ".png").read_bytes()
    files["truncated"].write_bytes(png[: len(png) // 2])
    Image.new("RGB", (120, 90), (240, 240, 235)).save(files["blank"])
    files["bomb"].write_bytes(png_header_only(100_000, 100_000))
    return files


# Digits as pen strokes in a unit box (x right, y down): PIL draws them into PNGs for the DrawPad's
# unit tests, and the browser test draws the same strokes with the mouse on its canvas.


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
    """Points of an elliptic arc; angles in degrees, 0 = up, clockwise on screen."""
    return [(cx + rx * math.sin(math.radians(a0 + (a1 - a0) * i / n)),
             cy - ry * math.cos(math.radians(a0 + (a1 - a0) * i / n))) for i in range(n + 1)]


DIGIT_STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360)],
    1: [[(0.42, 0.18), (0.56, 0.05), (0.53, 0.95)]],
    2: [_arc(0.5, 0.3, 0.27, 0.25, -80, 120) + [(0.2, 0.95), (0.82, 0.95)]],
    3: [_arc(0.48, 0.27, 0.25, 0.22, -80, 180), _arc(0.48, 0.72, 0.28, 0.23, 0, 240)],
    4: [[(0.62, 0.95), (0.62, 0.05), (0.15, 0.68), (0.85, 0.68)]],
    5: [[(0.78, 0.05), (0.32, 0.05), (0.28, 0.45)] + _arc(0.48, 0.67, 0.3, 0.28, -45, 220)],
    6: [[(0.7, 0.05), (0.45, 0.3)] + _arc(0.5, 0.68, 0.27, 0.27, -110, 270)],
    7: [[(0.2, 0.06), (0.8, 0.06), (0.42, 0.95)]],
    8: [_arc(0.5, 0.27, 0.22, 0.22, 180, 540), _arc(0.5, 0.72, 0.27, 0.23, 0, 360)],
    9: [_arc(0.48, 0.3, 0.26, 0.25, 90, 450) + [(0.72, 0.95)]],
}


def strokes_in_box(digit: int, box: tuple[float, float, float, float]) -> list[list[tuple[float, float]]]:
    """DIGIT_STROKES[digit] mapped into box (x, y, width, height)."""
    x, y, w, h = box
    return [[(x + px * w, y + py * h) for px, py in stroke] for stroke in DIGIT_STROKES[digit]]


def drawing_png(digit: int | None, size=(280, 280), box=(70, 40, 140, 200), width: int = 20,
                ink=0, paper=255, mode: str = "L") -> bytes:
    """PNG of `digit` drawn as strokes in box (x, y, w, h) of a canvas, round caps and joints, as a
    drawing app makes it; digit None: the empty canvas."""
    from PIL import Image, ImageDraw

    im = Image.new(mode, size, paper)
    d = ImageDraw.Draw(im)
    for pts in strokes_in_box(digit, box) if digit is not None else []:
        d.line(pts, fill=ink, width=width, joint="curve")
        for px, py in (pts[0], pts[-1]):
            d.ellipse([px - width / 2, py - width / 2, px + width / 2, py + width / 2], fill=ink)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


KILLED_TRIAL = "lr=0.001,seed=1"  # the trial of the tests' tiny sweep whose worker dies once


def trial_killed_once(config, specs):
    """labkit.sweep.run_trial, except that the KILLED_TRIAL's first attempt SIGKILLs its own Ray worker."""
    import os
    import signal
    from pathlib import Path

    from labkit.sweep import run_trial

    marker = Path(specs[config["name"]]["dir"]).parent.parent / f"killed-once-{config['name']}"
    if config["name"] == KILLED_TRIAL and not marker.exists():
        marker.write_text(f"pid {os.getpid()} killed itself\n")
        os.kill(os.getpid(), signal.SIGKILL)
    run_trial(config, specs)
def jpeg_with_exif_entries(img, entries) -> bytes:
    """JPEG bytes of img whose EXIF block is a little-endian TIFF IFD of raw (tag, type, count,
    4-byte value) entries, written as given: wrong types and all."""
    ifd = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += struct.pack("<I", 0) + b"\x01\x00\x00\x00\x00\x00\x00\x00"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=b"Exif\x00\x00" + ifd)
    return buf.getvalue()


ORIENTATION_6 = (0x0112, 3, 1, struct.pack("<HH", 6, 0))  # EXIF orientation 6 (stored turned 90 degrees), a valid SHORT


def corrupt_exif_jpegs(img) -> dict[str, bytes]:
    """Two JPEGs of img with orientation 6 and a corrupt EXIF block that Pillow's exif_transpose
    fails on when it rewrites the block: XResolution as a BYTE (TypeError) and ResolutionUnit
    as a BYTE holding text (struct.error)."""
    return {"type_error.jpg": jpeg_with_exif_entries(img, [ORIENTATION_6, (0x011A, 1, 1, b"abcd")]),
            "struct_error.jpg": jpeg_with_exif_entries(img, [ORIENTATION_6, (0x0128, 1, 1, b"abcd")])}
