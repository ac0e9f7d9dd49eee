"""labkit.widgets.PredictPanel, driven in plain Python as ipywidgets 8 would drive it."""
from __future__ import annotations

import datetime as dt
import io

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from PIL import Image

import labkit.predict
from labkit.config import CUSTOM_DIR
from labkit.data import load_mnist
from labkit.widgets import PredictPanel, uploaded_files

torch.set_num_threads(1)


def upload_entry(name: str, data: bytes, kind: str = "image/png") -> dict:
    """One entry of FileUpload.value as ipywidgets 8 gives it."""
    return {"name": name, "type": kind, "size": len(data), "content": memoryview(data),
            "last_modified": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)}


@pytest.fixture(scope="module")
def panel():
    return PredictPanel()


@pytest.fixture(scope="module")
def three_png() -> bytes:
    """An MNIST test 3 drawn dark on a light 200x160 page, as a PNG."""
    images, labels = load_mnist("test")
    digit = images[int(np.flatnonzero(labels == 3)[0])]
    page = np.full((160, 200), 235, np.uint8)
    big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    page[20:132, 50:162] = np.round(235 * (1 - big) + 20 * big).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format="PNG")
    return buf.getvalue()


def test_panel_is_a_widget_with_the_named_parts(panel):
    assert isinstance(panel, widgets.VBox)  # displays itself in a notebook
    assert isinstance(panel.upload, widgets.FileUpload) and panel.upload.multiple
    assert panel.upload.accept == "image/*"
    assert isinstance(panel.button, widgets.Button) and panel.button.description == "Predict"
    assert isinstance(panel.result, widgets.Widget) and panel.result in panel.children
    assert panel.predictions == []


def test_uploaded_png_is_predicted_after_click(panel, three_png):
    panel.upload.value = (upload_entry("3_mine.png", three_png),)
    panel.button.click()
    assert len(panel.predictions) == 1
    p = panel.predictions[0]
    assert p["name"] == "3_mine.png" and p["digit"] == 3
    assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-6
    assert len(panel.result.children) == 1
    card_html = " ".join(w.value for w in _walk(panel.result) if isinstance(w, widgets.HTML))
    assert "predicted <b>3</b>" in card_html and "target (from the file name): <b>3</b>" in card_html
    assert sum(isinstance(w, widgets.Image) for w in _walk(panel.result)) == 2  # picture and its 28x28


def test_several_files_and_bad_ones(panel, three_png):
    custom = sorted(p for p in CUSTOM_DIR.iterdir() if p.suffix in (".png", ".jpg"))[:3]
    value = tuple(upload_entry(p.name, p.read_bytes(), "image/jpeg") for p in custom)
    value += (upload_entry("notes.txt", b"hello", "text/plain"), upload_entry("empty.png", b""),
              {**upload_entry("bytes_content.png", b""), "content": three_png, "size": len(three_png)})
    panel.upload.value = value
    panel.button.click()
    preds = panel.predictions
    assert [p["name"] for p in preds] == [p.name for p in custom] + ["notes.txt", "empty.png", "bytes_content.png"]
    assert [p.get("digit") for p in preds[:3]] == [int(p.name[0]) for p in custom]
    assert "not an image" in preds[3]["error"] and "empty file" in preds[4]["error"]
    assert preds[5]["digit"] == 3
    assert len(panel.result.children) == 6
    messages = [w.value for w in panel.result.children if isinstance(w, widgets.HTML)]
    assert any("notes.txt" in m and "not an image" in m for m in messages)


def test_empty_upload_says_so(panel):
    panel.upload.value = ()
    panel.button.click()
    assert panel.predictions == []
    assert "Upload" in panel.result.children[0].value


def test_model_loads_once(monkeypatch, three_png):
    calls = []
    real = labkit.predict.load_checkpoint
    monkeypatch.setattr(labkit.predict, "load_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = PredictPanel()
    p.upload.value = (upload_entry("a.png", three_png),)
    p.button.click()
    p.button.click()
    assert len(calls) == 1 and p.predictions[0]["digit"] == 3


def test_uploaded_files_accepts_dict_likes_objects_and_ipywidgets_7(three_png):
    class Entry:
        name, content = "x.png", memoryview(b"abc")
    assert uploaded_files((Entry(),)) == [("x.png", b"abc")]
    assert uploaded_files(({"name": "z.png", "content": b"q"},)) == [("z.png", b"q")]
    assert uploaded_files({"y.png": {"metadata": {}, "content": b"xyz"}}) == [("y.png", b"xyz")]
    assert uploaded_files(()) == []


def _walk(w):
    yield w
    for c in getattr(w, "children", ()):
        yield from _walk(c)
