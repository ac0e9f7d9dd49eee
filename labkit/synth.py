"""Synthetic "photos" and "drawings" of handwritten digits, rendered from MNIST *test* images.

There is no camera in this project, so the custom digit set (``data/custom/``, written by
``data/custom/make_custom.py``) and the held-out evaluation set are rendered here: an MNIST test
digit is enlarged, slightly rotated, placed somewhere in a larger frame and drawn as dark ink on
unevenly lit paper with JPEG noise, as coloured ink, as an RGBA export with a transparent
background, as a JPEG with an EXIF orientation tag, as light strokes on a dark canvas, as a palette
PNG or as a 16-bit grayscale scan. Everything is seeded and deterministic.

* custom set: MNIST test indices 0-4999 only (``CUSTOM_INDICES``), committed as files;
* held-out set: MNIST test indices 5000-9999 (``HELDOUT_INDICES``), another seed, rendered on the
  fly (``render_heldout``), never written to the repository and never used to tune anything.
No MNIST *training* image is ever used.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from .data import load_mnist

CUSTOM_INDICES = range(0, 5000)
HELDOUT_INDICES = range(5000, 10000)
CUSTOM_SEED = 4
HELDOUT_SEED = 20_240_404
STYLES = ("photo", "photo_small", "color", "alpha", "exif", "drawing", "palette", "scan16")
_EXT = {"photo": "jpg", "photo_small": "jpg", "color": "jpg", "alpha": "png", "exif": "jpg",
        "drawing": "png", "palette": "png", "scan16": "png"}
_ORIENTATION_STORE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _digit_alpha(digit28: np.ndarray, size: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1] of the digit enlarged to about `size` px tall, rotated by `angle`."""
    img = Image.fromarray(digit28.astype(np.float32) / 255)
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0.0)
    a = np.asarray(img, dtype=np.float32)
    lo, hi = 0.15 + 0.1 * rng.random(), 0.55 + 0.1 * rng.random()  # crisper strokes than bicubic blur
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _place(alpha: np.ndarray, canvas_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The alpha pasted at a random position (fully inside) of an empty canvas."""
    H, W = canvas_hw
    h, w = alpha.shape
    y = int(rng.integers(0, max(1, H - h + 1)))
    x = int(rng.integers(0, max(1, W - w + 1)))
    out = np.zeros((H, W), dtype=np.float32)
    hh, ww = min(h, H - y), min(w, W - x)
    out[y:y + hh, x:x + ww] = alpha[:hh, :ww]
    return out


def _illumination(H: int, W: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Uneven lighting in (0, 1]: a gradient, a vignette and a soft shadow."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy, xx = yy / H - 0.5, xx / W - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(theta) * xx + np.sin(theta) * yy)  # in about [-0.7, 0.7]
    vign = xx ** 2 + yy ** 2
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    shadow = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))
    light = 1 - strength * (0.5 * (grad + 0.7) / 1.4 + 0.4 * vign + 0.25 * rng.random() * shadow)
    return np.clip(light, 0.3, 1).astype(np.float32)


def _texture(H: int, W: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Low-pass paper grain."""
    n = rng.normal(0, 1, (max(2, H // 4), max(2, W // 4))).astype(np.float32)
    n = np.asarray(Image.fromarray(n).resize((W, H), Image.Resampling.BICUBIC), dtype=np.float32)
    return sigma * n


def _specks(H: int, W: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """A few small dots of dirt."""
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.zeros((H, W), dtype=np.float32)
    for _ in range(count):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(0.7, 1.8)
        out = np.maximum(out, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1) * rng.uniform(0.4, 0.9))
    return out


def _to_rgb8(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8), mode="RGB")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def render(digit28: np.ndarray, style: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """(encoded file bytes, extension) of one MNIST digit rendered in `style`."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    angle = float(rng.uniform(-12, 12))
    small = style == "photo_small"
    if style in ("alpha", "drawing", "palette", "scan16"):
        H, W = int(rng.integers(120, 260)), int(rng.integers(120, 260))
    else:
        H, W = int(rng.integers(200, 420)), int(rng.integers(200, 420))
    frac = rng.uniform(0.18, 0.3) if small else rng.uniform(0.35, 0.75)
    size = max(16, int(frac * min(H, W)))
    a = _place(_digit_alpha(digit28, size, angle, rng), (H, W), rng)

    if style in ("photo", "photo_small", "color", "exif"):
        light = _illumination(H, W, rng, strength=rng.uniform(0.2, 0.6))
        if style == "color":
            paper = rng.uniform([0.75, 0.7, 0.55], [1.0, 1.0, 0.95]).astype(np.float32)
            ink = rng.choice(np.array([[0.1, 0.15, 0.6], [0.6, 0.05, 0.05], [0.05, 0.35, 0.1]], np.float32))
        else:
            paper = rng.uniform(0.85, 0.97, 1).repeat(3).astype(np.float32) * np.array([1.0, 0.98, 0.94], np.float32)
            ink = rng.uniform(0.02, 0.15, 1).repeat(3).astype(np.float32) + np.array([0.0, 0.0, 0.05], np.float32)
        a = a * rng.uniform(0.8, 1.0)
        dots = _specks(H, W, rng, int(rng.integers(0, 4)))
        a = np.maximum(a, dots)
        tex = _texture(H, W, rng, 0.02)[..., None]
        rgb = (paper * (1 - a[..., None]) + ink * a[..., None] + tex) * light[..., None]
        img = _to_rgb8(rgb).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 6), (H, W, 1))
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")
        quality = int(rng.integers(45, 80))
        if style == "exif":
            orientation = int(rng.choice([3, 6, 8]))
            exif = Image.Exif()
            exif[0x0112] = orientation
            stored = img.transpose(_ORIENTATION_STORE[orientation])  # exif_transpose undoes this
            return _encode(stored, "JPEG", quality=quality, exif=exif.tobytes()), "jpg"
        return _encode(img, "JPEG", quality=quality), "jpg"

    if style == "alpha":  # a drawing app's export: ink on a transparent background (RGB 0 there)
        ink = rng.choice(np.array([[0, 0, 0], [20, 20, 90], [90, 10, 10]], np.uint8))
        rgba = np.zeros((H, W, 4), dtype=np.uint8)
        rgba[..., :3] = ink
        rgba[..., 3] = np.round(a * 255).astype(np.uint8)
        rgba[a == 0, :3] = 0
        return _encode(Image.fromarray(rgba, mode="RGBA"), "PNG", optimize=True), "png"

    if style == "drawing":  # light strokes on a dark canvas, soft brush
        canvas = rng.uniform(0.0, 0.2, 3).astype(np.float32)
        stroke = rng.choice(np.array([[1, 1, 1], [1, 0.9, 0.3], [0.4, 0.9, 1.0]], np.float32))
        a8 = Image.fromarray(np.round(a * 255).astype(np.uint8))
        a = np.asarray(a8.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))), dtype=np.float32) / 255
        rgb = canvas * (1 - a[..., None]) + stroke * a[..., None]
        return _encode(_to_rgb8(rgb), "PNG", optimize=True), "png"

    if style == "palette":  # an indexed-colour PNG: blue ink on a pale background
        light = _illumination(H, W, rng, strength=rng.uniform(0.05, 0.25))
        rgb = (np.array([0.97, 0.96, 0.9], np.float32) * (1 - a[..., None])
               + np.array([0.1, 0.1, 0.45], np.float32) * a[..., None]) * light[..., None]
        img = _to_rgb8(rgb).quantize(colors=int(rng.integers(8, 32)), dither=Image.Dither.NONE)
        return _encode(img, "PNG", optimize=True), "png"

    # scan16: a 16-bit grayscale scan, dark ink on a bright flat page
    page = rng.uniform(0.8, 0.95)
    g = page * (1 - a) + 0.08 * a
    g16 = np.round(np.clip(g, 0, 1) * 65535).astype(np.uint16)
    return _encode(Image.fromarray(g16), "PNG"), "png"


def custom_plan(per_digit: int = 6, seed: int = CUSTOM_SEED) -> list[dict]:
    """Which MNIST test image (index < 5000) each custom file renders, in which style."""
    _, labels = load_mnist("test")
    rng = np.random.default_rng(seed)
    plan = []
    for digit in range(10):
        candidates = np.nonzero(labels[:5000] == digit)[0]
        chosen = rng.choice(candidates, size=per_digit, replace=False)
        for j, idx in enumerate(sorted(chosen.tolist())):
            style = STYLES[(digit * per_digit + j) % len(STYLES)]
            plan.append({"digit": digit, "index": int(idx), "style": style, "n": j + 1})
    return plan


def render_custom(per_digit: int = 6, seed: int = CUSTOM_SEED) -> list[dict]:
    """The committed custom set as rows {name, data, label, style, index, n} (index: the MNIST test image)."""
    images, _ = load_mnist("test")
    out = []
    for row in custom_plan(per_digit, seed):
        rng = np.random.default_rng([seed, row["index"]])
        data, ext = render(images[row["index"]], row["style"], rng)
        out.append({"name": f"{row['digit']}_{row['style']}_{row['n']:02d}.{ext}", "data": data,
                    "label": row["digit"], "style": row["style"], "index": row["index"], "n": row["n"]})
    return out


def render_heldout(n: int = 1000, seed: int = HELDOUT_SEED):
    """Yield rows {name, data, label, style, index} of `n` MNIST test images 5000-9999 rendered in all styles.

    Never committed and never used for tuning: the "MNIST test digits rendered as photos" set.
    """
    images, labels = load_mnist("test")
    rng = np.random.default_rng(seed)
    idx = rng.choice(np.arange(5000, 10000), size=min(n, 5000), replace=False)
    for k, i in enumerate(idx.tolist()):
        style = STYLES[k % len(STYLES)]
        data, ext = render(images[i], style, np.random.default_rng([seed, i]))
        yield {"name": f"{labels[i]}_{style}_{i}.{ext}", "data": data, "label": int(labels[i]), "style": style, "index": i}


STUDENT_SEED = 7  # random seed of the student-style set (one digit of each class)


def render_student(seed: int = STUDENT_SEED) -> list[dict]:
    """Ten rows {name, data, label, style, index}, one per digit: the report's setting, dark ink on
    evenly lit white paper, the digit filling most of a square frame (as the student's own digits),
    drawn from MNIST test digits 5000-9999 (never the committed custom set's)."""
    images, labels = load_mnist("test")
    rng = np.random.default_rng(seed)
    rows = []
    for digit in range(10):
        i = int(rng.choice(np.flatnonzero(labels[5000:] == digit))) + 5000
        side = int(rng.integers(160, 260))
        a = _place(_digit_alpha(images[i], int(side * rng.uniform(0.8, 0.95)), float(rng.uniform(-6, 6)), rng),
                   (side, side), rng)
        rgb = 0.94 * (1 - a[..., None]) + 0.08 * a[..., None] + _texture(side, side, rng, 0.01)[..., None]
        img = _to_rgb8(np.repeat(rgb, 3, axis=2)).filter(ImageFilter.GaussianBlur(0.6))
        rows.append({"name": f"{digit}.jpg", "data": _encode(img, "JPEG", quality=85), "label": digit,
                     "style": "student", "index": i})
    return rows


def page_with_digit(digit28, size=(300, 220), at=(40, 30), scale=5, dark_ink=True, gradient=0.0) -> np.ndarray:
    """float [0, 1] page with the digit enlarged `scale` times at `at` (x, y): ink dark on light."""
    W, H = size
    big = np.asarray(Image.fromarray(digit28).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC),
                     dtype=np.float32) / 255
    ink = np.zeros((H, W), np.float32)
    x, y = at
    ink[y:y + 28 * scale, x:x + 28 * scale] = big
    paper = 0.92 - gradient * np.linspace(0, 1, W, dtype=np.float32)[None, :]
    g = paper * (1 - ink) + 0.1 * ink
    return g if dark_ink else 1 - g
