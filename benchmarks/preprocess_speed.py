"""Print how long mnist_preprocess takes on a typical photo and on a huge one (no pass/fail).

Usage: .venv/bin/python benchmarks/preprocess_speed.py
Timings only: on a shared machine they are printed here, never asserted in tests (typical: under
0.05 s a photo, under 0.5 s a huge one).
"""
import io
import time

import numpy as np
from PIL import Image

from labkit.synth import page_with_digit as page  # the same synthetic photo the tests use

from labkit.data import load_mnist  # noqa: E402
from labkit.preprocess import mnist_preprocess  # noqa: E402


def jpeg(g: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(g * 255).astype(np.uint8)).convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def main() -> None:
    images, _ = load_mnist("test")
    seven = images[0]
    cases = {"typical 480x360 JPEG": jpeg(page(seven, size=(480, 360))),
             "huge 4000x3000 JPEG": jpeg(page(seven, size=(4000, 3000), at=(1500, 1000), scale=40))}
    for name, data in cases.items():
        mnist_preprocess(data)  # warm up
        times = []
        for _ in range(5):
            t = time.perf_counter()
            mnist_preprocess(data)
            times.append(time.perf_counter() - t)
        print(f"{name}: best {min(times) * 1e3:.1f} ms, median {sorted(times)[2] * 1e3:.1f} ms of 5")


if __name__ == "__main__":
    main()
