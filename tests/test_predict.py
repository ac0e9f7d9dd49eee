"""labkit.predict: Predictor, `labkit predict` (run_cli), and accuracy on the custom digit set."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from labkit.config import CUSTOM_DIR, DEFAULT_CHECKPOINT, WEIGHTS_DIR
from labkit.predict import Predictor, target_from_name
from labkit.preprocess import to_28x28
from labkit.synth import render_heldout

from helpers import IMAGES, bad_image_files

torch.set_num_threads(1)

# Measured with the checkpoints in data/weights (see data/custom/README.md); the tests hold them.
CUSTOM_ACCURACY_DEFAULT = 0.98  # default pipeline + default (improved) model on data/custom
HELDOUT_ACCURACY_DEFAULT = 0.97  # ... on 200 held-out MNIST test digits rendered as photos
CUSTOM_ACCURACY_BASELINE_MNIST = 0.85  # the baseline (report's network) with MNIST-style preprocessing
REPORT_PIPELINE_AT_MOST = 0.5  # the report's preprocessing fails on most photos and drawings

@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def baseline_predictor():
    return Predictor(WEIGHTS_DIR / "baseline.pt")


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
    arr = to_28x28(IMAGES[0])
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
    report = predictor.predict_file(path, preprocessing="report")
    assert report["input"].shape == (28, 28)


def test_predict_file_never_raises_for_a_bad_file(predictor, tmp_path):
    files = bad_image_files(tmp_path)
    expect = {"not_image": "not an image", "empty": "empty file", "truncated": "truncated",
              "blank": "blank image", "bomb": "too large to decode safely", "missing": "file not found"}
    for key, path in files.items():
        r = predictor.predict_file(path)
        assert set(r) == {"path", "error"}, key
        assert expect[key] in r["error"] and "\n" not in r["error"]


def _accuracy(pred: Predictor, method: str, items) -> float:
    arrays = np.stack([to_28x28(row["data"], method, name=row["name"]) for row in items])
    labels = np.array([row["label"] for row in items])
    return float((pred.probabilities(arrays).argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def custom_items():
    return [{"name": p.name, "data": p.read_bytes(), "label": target_from_name(p.name)} for p in IMAGES]


def test_accuracy_default_pipeline_on_custom_set(predictor, custom_items):
    assert _accuracy(predictor, "mnist", custom_items) >= CUSTOM_ACCURACY_DEFAULT


def test_accuracy_default_pipeline_on_heldout_rendered_photos(predictor):
    assert _accuracy(predictor, "mnist", list(render_heldout(200))) >= HELDOUT_ACCURACY_DEFAULT


def test_report_pipeline_fails_on_photos_and_mnist_style_fixes_the_baseline(predictor, baseline_predictor, custom_items):
    assert _accuracy(baseline_predictor, "report", custom_items) <= REPORT_PIPELINE_AT_MOST
    assert _accuracy(predictor, "report", custom_items) <= REPORT_PIPELINE_AT_MOST
    assert _accuracy(baseline_predictor, "mnist", custom_items) >= CUSTOM_ACCURACY_BASELINE_MNIST


def test_predicting_does_not_import_the_training_code():
    """labkit.predict loads checkpoints through labkit.checkpoint; training (and its process-wide settings) stays out."""
    import subprocess
    import sys

    code = "import sys, labkit.predict; print('labkit.train' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip() == "False"


def test_a_checkpoint_that_is_a_folder_a_device_or_nan_says_what_it_is(tmp_path):
    from labkit.checkpoint import CheckpointError

    ckpt = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    torch.save({**ckpt, "state_dict": state}, tmp_path / "nan.pt")
    expect = {tmp_path: "is a directory, not a labkit checkpoint",
              "/dev/zero": "is a character device, not a labkit checkpoint",
              tmp_path / "nan.pt": f"weights not finite (NaN or infinite in {name}): the run that wrote it diverged; "
                                   "retrain with a lower learning rate"}
    for path, words in expect.items():
        with pytest.raises(CheckpointError) as e:
            Predictor(path)
        assert str(e.value).endswith(f": {words}") and "\n" not in str(e.value)
