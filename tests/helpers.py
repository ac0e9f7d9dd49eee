"""Helpers shared by the tests (pytest puts tests/ on sys.path: `from helpers import ...`)."""
from __future__ import annotations

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
