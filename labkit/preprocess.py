"""Turn a picture of a digit into the 28x28 uint8 array a model sees.

Two pipelines:

* ``report_preprocess``: the report's ``readImage`` exactly: grayscale, ``p >= 100 -> 0`` else
  ``255 - p``, then the whole picture resized to 28x28 with Pillow's default filter.
* ``mnist_preprocess`` (the default): how MNIST itself was made, robust to photos and drawings:
  EXIF orientation, any image mode (alpha composited over white), automatic polarity, flattening
  of uneven lighting, an Otsu threshold, crop to the digit ignoring specks, fit into 20x20 keeping
  the aspect ratio (anti-aliased), centre by centre of mass in 28x28.

Both return uint8 (28, 28): 0 background, 255 ink. Inputs: a path, bytes, a binary file object or
a PIL Image. Every problem with the input raises ``ImageError`` naming the file.
"""
from __future__ import annotations

import io
import math
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .config import PREPROCESSING
from .safeio import ReadRefused, read_at_most, read_regular

METHODS = PREPROCESSING  # declared with the other choices in labkit.config
WORK_SIDE = 640  # photos are downscaled to at most this side before the heavy steps
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
MAX_IMAGE_BYTES = 50_000_000  # larger files are refused before reading (a 12 MP JPEG is ~5 MB)


class ImageError(ValueError):
    """An input picture cannot be used: names the file and says what is wrong."""

    def __init__(self, name, problem: str):
        self.name = str(name)
        self.problem = problem
        super().__init__(f"{self.name}: {problem}")


# --------------------------------------------------------------------------------------------
# Reading


def _read_source(source, name=None) -> tuple[bytes | Image.Image, str]:
    """(bytes or PIL Image, display name) of any accepted input; at most MAX_IMAGE_BYTES are read,
    from a regular file only (a FIFO or a device such as /dev/zero is refused without reading)."""
    if isinstance(source, Image.Image):
        return source, name or getattr(source, "filename", "") or "<image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        size = memoryview(source).nbytes
        if size > MAX_IMAGE_BYTES:
            raise ImageError(name, f"{size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,} bytes")
        return bytes(source), name
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        try:
            return read_regular(source, MAX_IMAGE_BYTES, "an image file"), name
        except ReadRefused as e:
            raise ImageError(name, e.problem) from None
    if hasattr(source, "read"):
        name = name or str(getattr(source, "name", "") or "<file>")
        try:
            data = read_at_most(source, MAX_IMAGE_BYTES)
        except TypeError:  # a text-mode file object: its read returns str, joining fails
            data = None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(name, "file object must be opened in binary mode")
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageError(name, f"more than {MAX_IMAGE_BYTES:,} bytes, over the limit")
        return bytes(data), name
    raise TypeError(f"expected a path, bytes, a binary file object or a PIL Image, not {type(source).__name__}")


def open_image(source, name=None, draft: int | None = None) -> tuple[Image.Image, str]:
    """(fully decoded PIL Image, name), or ImageError: empty, not an image, truncated, too large.

    ``draft``: for JPEG, let the decoder shrink by 1/2, 1/4 or 1/8 while keeping both sides at least
    this large (much faster for big photos).
    """
    img, name, _ = _open(source, name, draft)
    return img, name


def _open(source, name=None, draft: int | None = None) -> tuple[Image.Image, str, tuple[int, int]]:
    """open_image, plus the picture's size in the file (before any draft reduction)."""
    data, name = _read_source(source, name)
    if isinstance(data, Image.Image):  # opened by the caller: decode it here, errors named
        try:
            data.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise ImageError(name, f"corrupt or truncated image data ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return data, name, tuple(data.size)
    if len(data) == 0:
        raise ImageError(name, "empty file (0 bytes), not an image")
    with warnings.catch_warnings():
        # Above MAX_IMAGE_PIXELS Pillow only warns; make that an error too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            size = tuple(img.size)
            if draft and img.format == "JPEG":
                img.draft(img.mode, (draft, draft))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(name, f"image too large to decode safely: {_bomb_size(data, e)} "
                                   f"(the limit is {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's "
                                   f"decompression-bomb guard)") from None
        except UnidentifiedImageError:
            raise ImageError(name, f"not an image ({len(data):,} bytes in no format Pillow can read)") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "truncated" in msg.lower() or isinstance(e, EOFError):
                raise ImageError(name, f"truncated image file ({msg})") from None
            raise ImageError(name, f"corrupt or truncated image data ({msg})") from None
    return img, name, size


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that undoes it


def upright(img: Image.Image) -> Image.Image:
    """img turned as its EXIF orientation says (Pillow's exif_transpose). A corrupt EXIF block
    (a tag of the wrong type, a truncated block) only costs the metadata: the orientation tag
    alone when it can be read, else the picture as stored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" warnings: handled here
        try:
            return ImageOps.exif_transpose(img)
        except Exception:  # Pillow fails rewriting the EXIF block, after reading the orientation
            pass
        try:
            method = _TRANSPOSE.get(img.getexif().get(0x0112, 1))
        except Exception:  # the orientation itself unreadable (or unhashable)
            method = None
    return img.transpose(method) if method is not None else img


def read_upright(source, name=None, draft: int | None = None) -> tuple[Image.Image, str, tuple[int, int]]:
    """How every picture is read, by `labkit predict`, the widgets and both views of it: (decoded
    image turned upright, name, its upright size in the file); ImageError for anything unusable."""
    img, name, (w, h) = _open(source, name, draft)
    turned = upright(img)
    swapped = turned.size != img.size
    return turned, name, ((h, w) if swapped else (w, h))


def _bomb_size(data: bytes, e: Exception) -> str:
    """'W x H = N pixels' of the image the header declares (the refused size, not Pillow's limit)."""
    size = _header_size(data)
    if size is not None:
        w, h = size
        return f"{w}x{h} = {w * h:,} pixels"
    m = re.search(r"\((\d+) pixels\)", str(e))  # Pillow: "Image size (N pixels) exceeds limit of M ..."
    return f"{int(m.group(1)):,} pixels" if m else "too many pixels"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header alone: the format plugin that Image.open would pick,
    without its decompression-bomb check (that check is what refused the image)."""
    Image.init()
    prefix = data[:16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            try:
                ok = accept(prefix) if accept is not None else True
                if not ok or isinstance(ok, str):  # a str is Pillow's "looks like it, but unsupported"
                    continue
                im = factory(io.BytesIO(data), "")
            except Exception:  # not this format
                continue
            try:
                return tuple(im.size)
            finally:
                im.close()
    return None


# --------------------------------------------------------------------------------------------
# The report's pipeline


def report_preprocess(image, name=None) -> np.ndarray:
    """The report's readImage: convert('L'), p >= 100 -> 0 else 255 - p, resize to 28x28."""
    img, name = open_image(image, name)
    img = img.convert("L")
    a = np.asarray(img, dtype=np.int32)
    out = Image.fromarray(np.where(a >= 100, 0, 255 - a).astype(np.uint8), mode="L")
    if out.size != (28, 28):
        out = out.resize((28, 28))  # Pillow's default filter, as the report
    return np.asarray(out, dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------
# The MNIST-style pipeline


def to_gray(img: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1] of any mode; transparency composited over white."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if (mode == "PA" or "transparency" in img.info) else "RGB")
        mode = img.mode
    elif mode in ("L", "RGB", "1") and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        img = img.convert("RGBA")
        rgba = np.asarray(img, dtype=np.float32) / 255
        alpha = rgba[..., 3:4]
        luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        over_white = luma * alpha[..., 0] + (1 - alpha[..., 0])
        if np.ptp(over_white) < 0.06 and np.ptp(alpha) >= 0.5:
            return luma * alpha[..., 0]  # light strokes on a transparent background: over black
        return over_white
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        a = np.asarray(img.convert("F") if mode != "F" else img, dtype=np.float32)
        finite = a[np.isfinite(a)]
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(finite.max()) if finite.size else 0.0
        lo = float(finite.min()) if finite.size else 0.0
        if mode.startswith("I;16"):
            scale, offset = 65535.0, 0.0
        elif lo >= 0 and hi <= 1.0 and mode == "F":
            scale, offset = 1.0, 0.0
        elif lo >= 0 and hi <= 255:
            scale, offset = 255.0, 0.0
        elif lo >= 0 and hi <= 65535:
            scale, offset = 65535.0, 0.0
        else:
            scale, offset = max(hi - lo, 1e-12), lo
        return np.clip((a - offset) / scale, 0, 1).astype(np.float32)
    if mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / w0[-1] - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    k = int(np.argmax(between))
    return float(edges[k + 1])


def _background(ink: np.ndarray) -> np.ndarray:
    """Slowly varying background level of an ink-bright image (grey-level opening at coarse scale)."""
    h, w = ink.shape
    small_side = 32
    f = small_side / max(h, w)
    sw, sh = max(1, round(w * f)), max(1, round(h * f))
    small = Image.fromarray(ink).resize((sw, sh), Image.Resampling.BOX)
    # Opening over ~1/4 of the picture: the minimum removes strokes, the maximum restores the level
    # (exactly, for a linear gradient).
    small = small.filter(ImageFilter.MinFilter(9)).filter(ImageFilter.MaxFilter(9))
    a = np.asarray(small, dtype=np.float32)
    for _ in range(2):  # smooth the blocky estimate (3x3 mean, twice)
        p = np.pad(a, 1, mode="edge")
        a = sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9
    return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _light_background(gray: np.ndarray) -> bool:
    """Polarity: True when the ink is darker than its background.

    The background is what the border mostly is. When the border is split (uneven lighting, or
    ink touching the edge), ink is the side that departs further from the local background
    (a coarse median), i.e. the minority that stands out.
    """
    t0 = otsu_threshold(gray)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    light = float(np.mean(border > t0))
    if abs(light - 0.5) >= 0.3:
        return light > 0.5
    h, w = gray.shape
    f = 32 / max(h, w)
    small = Image.fromarray(gray).resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    local = small.filter(ImageFilter.MedianFilter(9)).resize((w, h), Image.Resampling.BILINEAR)
    r = gray - np.asarray(local, dtype=np.float32)
    lo, hi = np.percentile(r, [0.5, 99.5])
    return -lo > hi


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool mask: (labels (H, W) int32, 0 = none; areas per label)."""
    h, w = mask.shape
    m = mask.astype(np.int8)
    d = np.diff(np.pad(m, ((0, 0), (1, 1))), axis=1)
    rows_s, cols_s = np.nonzero(d == 1)
    rows_e, cols_e = np.nonzero(d == -1)  # end exclusive; same row order as starts
    n = len(rows_s)
    labels = np.zeros((h, w), dtype=np.int32)
    if n == 0:
        return labels, np.zeros(1, dtype=np.int64)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows_s, np.arange(h + 1))
    rs, cs, ce = rows_s.tolist(), cols_s.tolist(), cols_e.tolist()
    for r in range(1, h):
        a0, a1 = row_start[r - 1], row_start[r]  # runs of the previous row
        b0, b1 = row_start[r], row_start[r + 1]
        i, j = a0, b0
        while i < a1 and j < b1:
            # 8-connectivity: runs touch when [s, e) ranges overlap after widening by one.
            if cs[i] < ce[j] + 1 and cs[j] < ce[i] + 1:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ce[i] < ce[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(n)])
    _, run_label = np.unique(roots, return_inverse=True)
    run_label = run_label + 1
    lengths = cols_e - cols_s
    areas = np.bincount(run_label, weights=lengths).astype(np.int64)
    for r, s, e, lab in zip(rs, cs, ce, run_label.tolist()):
        labels[r, s:e] = lab
    return labels, areas


def _digit_mask(mask: np.ndarray) -> np.ndarray:
    """The digit's pixels of a binary ink mask: the largest component and the sizeable ones near it."""
    labels, areas = _components(mask)
    if len(areas) <= 1:
        return np.zeros_like(mask)
    areas[0] = 0
    big = int(np.argmax(areas))
    ys, xs = np.nonzero(labels == big)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    reach = 0.6 * max(y1 - y0 + 1, x1 - x0 + 1)
    keep = np.zeros(len(areas), dtype=bool)
    keep[big] = True
    min_area = max(0.04 * areas[big], 2)
    for lab in np.nonzero(areas >= min_area)[0]:
        if lab == big or lab == 0:
            continue
        ly, lx = np.nonzero(labels == lab)
        # Near the main stroke: its bounding box within `reach` of the largest component's box.
        dy = max(0, y0 - ly.max(), ly.min() - y1)
        dx = max(0, x0 - lx.max(), lx.min() - x1)
        if max(dy, dx) <= reach:
            keep[lab] = True
    return keep[labels]


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary shape: 2 * area / perimeter."""
    area = mask.sum()
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    perimeter = max(int(area - inner.sum()), 1)
    return 2.0 * float(area) / perimeter


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a non-negative 2-D array."""
    a = np.asarray(a, dtype=np.float64)
    total = a.sum()
    if total <= 0:
        return (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    rows = np.arange(a.shape[0]) @ a.sum(1) / total
    cols = np.arange(a.shape[1]) @ a.sum(0) / total
    return float(rows), float(cols)


def _too_small(name, size: tuple[int, int], seen: tuple[int, int]) -> ImageError | None:
    """The refusal of a picture whose short side is under 2 pixels as analysed (`seen`), naming
    its size in the file; None when it is large enough."""
    if min(seen) >= 2:
        return None
    w, h = size
    if min(w, h) < 2:
        return ImageError(name, f"image of {w}x{h} pixels is too small to hold a digit (both sides need 2 pixels or more)")
    return ImageError(name, f"image of {w}x{h} pixels is too narrow to hold a digit (reduced to "
                            f"{seen[0]}x{seen[1]} for analysis, its short side is under 2 pixels)")


def mnist_from_gray(gray: np.ndarray, name: str = "<image>", size: tuple[int, int] | None = None) -> np.ndarray:
    """The MNIST-style steps on a float (H, W) [0, 1] grayscale picture (any polarity); `size`:
    (width, height) of the picture in its file, for messages (default: gray's)."""
    h, w = gray.shape
    size = size or (w, h)
    problem = _too_small(name, size, (w, h))
    if problem:
        raise problem
    if max(h, w) > WORK_SIDE:  # downscale huge photos before the heavy steps
        f = WORK_SIDE / max(h, w)
        gray = np.asarray(Image.fromarray(gray).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                       Image.Resampling.BOX), dtype=np.float32)
        h, w = gray.shape
        problem = _too_small(name, size, (w, h))
        if problem:
            raise problem

    ink = (1.0 - gray) if _light_background(gray) else gray.copy()  # ink bright from here on

    # Flatten uneven lighting, then separate ink from paper with Otsu.
    flat = np.clip(ink - _background(ink), 0, 1)
    lo_p, hi_p = np.percentile(flat, [1, 99.9])
    if hi_p - lo_p < 0.06:
        raise ImageError(name, "blank image: no digit found (no contrast between ink and background)")
    t = otsu_threshold(flat)
    ink_px = flat[flat > t]
    bg_px = flat[flat <= t]
    bg_mean, bg_std = float(bg_px.mean()), float(bg_px.std())
    ink_level = float(np.percentile(ink_px, 90)) if ink_px.size else t
    t = max(t, bg_mean + 3 * bg_std, bg_mean + 0.25 * (ink_level - bg_mean))
    mask = flat > t
    if ink_level - bg_mean < 0.08 or mask.sum() < 3:
        raise ImageError(name, "blank image: no digit found (ink and background not distinguishable)")
    if mask.mean() > 0.6:
        raise ImageError(name, "blank image: no digit found (no separate strokes on a background)")

    digit = _digit_mask(mask)
    if digit.sum() < 3:
        raise ImageError(name, "blank image: no digit found")
    ys, xs = np.nonzero(digit)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # Keep anti-aliased edges: a 1-pixel halo around the digit's mask.
    halo = np.asarray(Image.fromarray(digit.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    lo = bg_mean + 0.5 * (t - bg_mean)
    level = np.clip((flat - lo) / max(ink_level - lo, 1e-6), 0, 1) * halo
    y0, y1 = max(y0 - 1, 0), min(y1 + 1, h)
    x0, x1 = max(x0 - 1, 0), min(x1 + 1, w)
    crop = level[y0:y1, x0:x1]
    ch, cw = crop.shape
    mh, mw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1

    # Fit the digit's box into 20x20 keeping the aspect ratio, via a 4x intermediate so that
    # thin strokes can be thickened to MNIST's pen width before the final anti-aliased resize.
    scale = 20.0 / max(mh, mw)
    width_20 = _stroke_width(digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1]) * scale
    s4 = scale * 4
    mid = Image.fromarray(crop.astype(np.float32)).resize(
        (max(1, round(cw * s4)), max(1, round(ch * s4))),
        Image.Resampling.BOX if s4 < 1 else Image.Resampling.BILINEAR)
    if width_20 < 1.6:
        grow = min(int(math.ceil((1.6 - width_20) * 4 / 2)), 4)  # pixels each side at 4x
        mid = mid.filter(ImageFilter.MaxFilter(2 * grow + 1))
    fw, fh = max(1, round(cw * scale)), max(1, round(ch * scale))
    fw, fh = min(fw, 22), min(fh, 22)  # the 1-pixel margins may add a little over 20
    small = np.asarray(mid.resize((fw, fh), Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0, 1)
    if small.max() <= 0:
        raise ImageError(name, "blank image: no digit found")
    small = small / small.max()

    # Centre by centre of mass in 28x28, as MNIST.
    cy, cx = center_of_mass(small)
    oy, ox = int(round(13.5 - cy)), int(round(13.5 - cx))
    out = np.zeros((28, 28), dtype=np.float32)
    sy0, sx0 = max(0, -oy), max(0, -ox)
    dy0, dx0 = max(0, oy), max(0, ox)
    hh = min(fh - sy0, 28 - dy0)
    ww = min(fw - sx0, 28 - dx0)
    out[dy0:dy0 + hh, dx0:dx0 + ww] = small[sy0:sy0 + hh, sx0:sx0 + ww]
    return np.round(out * 255).astype(np.uint8)


def mnist_preprocess(image, name=None) -> np.ndarray:
    """MNIST-style: uint8 (28, 28), 0 background, 255 ink, digit in 20x20, centred by mass."""
    img, name, size = read_upright(image, name, draft=2 * WORK_SIDE)
    w, h = img.size
    problem = _too_small(name, size, (w, h))
    if problem:
        raise problem
    if max(w, h) > 4 * WORK_SIDE:  # cheap reduction of huge-but-legal pictures before conversion
        try:
            img = img.reduce(max(1, max(w, h) // (2 * WORK_SIDE)))
        except ValueError:  # a mode reduce does not support: to_gray and the resize handle it
            pass
    return mnist_from_gray(to_gray(img), name, size)


def to_28x28(image, method: str = "mnist", name=None) -> np.ndarray:
    """28x28 uint8 of `image` by `method`: "mnist" (default) or "report"."""
    if method == "mnist":
        return mnist_preprocess(image, name)
    if method == "report":
        return report_preprocess(image, name)
    raise ValueError(f"preprocess method must be one of {METHODS}, not {method!r}")


def as_viewed(source, name=None) -> Image.Image:
    """The picture as an image viewer shows it: EXIF-rotated, any other mode as the grayscale the pipeline starts from."""
    img, _, _ = read_upright(source, name)
    if img.mode not in ("RGB", "L"):  # alpha over white, palettes, 16-bit scans
        img = Image.fromarray(np.round(to_gray(img) * 255).astype(np.uint8))
    return img
