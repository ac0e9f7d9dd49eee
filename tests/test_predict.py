"""labkit.predict: Predictor, `labkit predict` (run_cli), and accuracy on the custom digit set."""
from __future__ import annotations

import csv
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from labkit.config import CUSTOM_DIR, DEFAULT_CHECKPOINT, WEIGHTS_DIR
from labkit.predict import Predictor, run_cli, target_from_name
from labkit.preprocess import preprocess
from labkit.synth import render_heldout

torch.set_num_threads(1)

# Measured with the checkpoints in data/weights (see data/custom/README.md); the tests hold them.
CUSTOM_ACCURACY_DEFAULT = 0.98  # default pipeline + default (improved) model on data/custom
HELDOUT_ACCURACY_DEFAULT = 0.97  # ... on 200 held-out MNIST test digits rendered as photos
CUSTOM_ACCURACY_SEED_MNIST = 0.85  # SeedCNN with MNIST-style preprocessing
REPORT_PIPELINE_AT_MOST = 0.5  # the report's preprocessing fails on most photos and drawings

IMAGES = sorted(p for p in CUSTOM_DIR.iterdir() if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def seed_predictor():
    path = WEIGHTS_DIR / "seed.pt"
    if not path.exists():
        pytest.skip("no SeedCNN checkpoint shipped")
    return Predictor(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height: a decompression bomb, cheap to make."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def bad_files(tmp_path):
    good = IMAGES[0]
    files = {"not_image": tmp_path / "notes.png", "empty": tmp_path / "empty.jpg",
             "truncated": tmp_path / "cut.png", "blank": tmp_path / "blank.png", "bomb": tmp_path / "bomb.png",
             "missing": tmp_path / "missing.png"}
    files["not_image"].write_text("not a picture")
    files["empty"].write_bytes(b"")
    png = next(p for p in IMAGES if p.suffix == ".png").read_bytes()
    files["truncated"].write_bytes(png[: len(png) // 2])
    Image.new("RGB", (120, 90), (240, 240, 235)).save(files["blank"])
    files["bomb"].write_bytes(png_header_only(100_000, 100_000))
    return good, files


def test_target_from_name():
    assert target_from_name("3_photo_07.jpg") == 3
    assert target_from_name("some/dir/0.png") == 0
    assert target_from_name("9") == 9
    assert target_from_name("photo_3.jpg") is None
    assert target_from_name("12.png") is None  # not one digit
    assert target_from_name("") is None


def test_custom_set_is_complete_and_small():
    assert len(IMAGES) >= 40
    assert {target_from_name(p.name) for p in IMAGES} == set(range(10))
    assert sum(p.stat().st_size for p in CUSTOM_DIR.iterdir()) < 2_000_000
    with open(CUSTOM_DIR / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == [p.name for p in IMAGES]
    assert all(int(r["mnist_test_index"]) < 5000 for r in rows)  # test images 0-4999, never training


def test_predictor_arrays(predictor):
    assert predictor.checkpoint == DEFAULT_CHECKPOINT
    arr = preprocess(IMAGES[0])
    r = predictor.predict_array(arr)
    assert set(r) == {"digit", "probabilities", "input"}
    assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-6
    assert r["digit"] == int(np.argmax(r["probabilities"]))
    assert r["input"].shape == (28, 28)
    assert predictor.probabilities(np.stack([arr, arr])).shape == (2, 10)


def test_predict_file_inputs(predictor):
    path = IMAGES[0]
    by_path = predictor.predict_file(path)
    assert by_path["path"] == str(path) and by_path["digit"] == target_from_name(path.name)
    by_bytes = predictor.predict_file(path.read_bytes(), name=path.name)
    assert by_bytes["name"] == path.name and by_bytes["probabilities"] == by_path["probabilities"]
    report = predictor.predict_file(path, preprocess="report")
    assert report["input"].shape == (28, 28)


def test_predict_file_never_raises_for_a_bad_file(predictor, bad_files):
    _, files = bad_files
    expect = {"not_image": "not an image", "empty": "empty file", "truncated": "truncated",
              "blank": "blank image", "bomb": "too large to decode safely", "missing": "file not found"}
    for key, path in files.items():
        r = predictor.predict_file(path)
        assert set(r) == {"path", "error"}, key
        assert expect[key] in r["error"] and "\n" not in r["error"]


def test_cli_json_mixed_files(capsys, bad_files):
    good, files = bad_files
    paths = [str(good), *map(str, files.values()), str(IMAGES[-1])]
    assert run_cli(paths, None, "mnist", True) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == paths
    ok = [line for line in lines if "digit" in line]
    assert len(ok) == 2 and all(set(line) == {"path", "digit", "probabilities"} for line in ok)
    assert ok[0]["digit"] == target_from_name(good.name) and len(ok[0]["probabilities"]) == 10
    errors = [line for line in lines if "error" in line]
    assert len(errors) == len(files) and all(set(e) == {"path", "error"} for e in errors)
    assert "Traceback" not in out + err


def test_cli_text_and_all_good(capsys):
    assert run_cli([str(p) for p in IMAGES[:3]], None, "mnist", False) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "probability" in out
    assert run_cli([str(IMAGES[0])], str(DEFAULT_CHECKPOINT), "report", True) == 0
    assert "digit" in json.loads(capsys.readouterr().out)


def test_cli_bad_checkpoint_or_method(capsys, tmp_path):
    assert run_cli([str(IMAGES[0])], str(tmp_path / "none.pt"), "mnist", False) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert run_cli([str(IMAGES[0])], str(bad), "mnist", True) == 2
    assert run_cli([str(IMAGES[0])], None, "fancy", True) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 3


def _accuracy(pred: Predictor, method: str, items) -> float:
    arrays = np.stack([preprocess(data, method, name=name) for name, data, _ in items])
    labels = np.array([y for *_, y in items])
    return float((pred.probabilities(arrays).argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def custom_items():
    return [(p.name, p.read_bytes(), target_from_name(p.name)) for p in IMAGES]


def test_accuracy_default_pipeline_on_custom_set(predictor, custom_items):
    assert _accuracy(predictor, "mnist", custom_items) >= CUSTOM_ACCURACY_DEFAULT


def test_accuracy_default_pipeline_on_heldout_rendered_photos(predictor):
    assert _accuracy(predictor, "mnist", list(render_heldout(200))) >= HELDOUT_ACCURACY_DEFAULT


def test_report_pipeline_fails_on_photos_and_mnist_style_fixes_seedcnn(predictor, seed_predictor, custom_items):
    assert _accuracy(seed_predictor, "report", custom_items) <= REPORT_PIPELINE_AT_MOST
    assert _accuracy(predictor, "report", custom_items) <= REPORT_PIPELINE_AT_MOST
    assert _accuracy(seed_predictor, "mnist", custom_items) >= CUSTOM_ACCURACY_SEED_MNIST
