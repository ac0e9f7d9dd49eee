"""Write the synthetic custom digit set into this folder (deterministic, seeded).

    python data/custom/make_custom.py

Renders MNIST *test* images with index 0-4999 (never training images) as photos and drawings with
labkit.synth, six per digit, and writes manifest.csv (file, digit, MNIST test index, style).
The held-out evaluation set (test images 5000-9999, another seed) is not written: see
labkit.synth.render_heldout, used on the fly by the tests and notebook 04.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the project root, so labkit imports without installing

from labkit.synth import CUSTOM_SEED, render_custom  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".png"}


def main() -> int:
    files = render_custom(per_digit=6, seed=CUSTOM_SEED)
    for old in HERE.iterdir():  # drop images of an earlier plan
        if old.suffix in IMAGE_SUFFIXES and old.name[:1].isdigit():
            old.unlink()
    for row in files:
        (HERE / row["name"]).write_bytes(row["data"])
    with open(HERE / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "digit", "mnist_test_index", "style"])
        for row in files:
            w.writerow([row["name"], row["label"], row["index"], row["style"]])
    total = sum(len(row["data"]) for row in files)
    print(f"wrote {len(files)} images ({total / 1e6:.2f} MB) and manifest.csv to {HERE.name}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
