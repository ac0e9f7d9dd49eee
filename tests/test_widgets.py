"""labkit.widgets: PredictPanel, DrawPad and TrainPanel, driven in plain Python as ipywidgets 8
would drive them (tests/test_browser.py drives them in a real JupyterLab)."""
from __future__ import annotations

import datetime as dt
import fnmatch
import io
import json
import re
import subprocess
import sys
import threading

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from PIL import Image

import labkit.predict
from helpers import drawing_png
from labkit.config import CUSTOM_DIR, PACKAGE_DIR, PROJECT_ROOT
from labkit.recipes import recipe
from labkit.data import load_mnist
from labkit.widgets import DrawPad, PredictPanel, TrainPanel, uploaded_files

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


def test_corrupt_exif_jpegs_get_their_cards_as_labkit_predict_reads_them(panel, three_png, tmp_path, capsys):
    """Every file its own card, read as `labkit predict` reads it: two JPEGs whose EXIF block
    Pillow cannot rewrite, a good PNG and one that is no image, in one upload."""
    from helpers import corrupt_exif_jpegs
    from labkit.predict import run_cli

    stored = Image.open(io.BytesIO(three_png)).convert("L").transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes it
    files = {**{f"3_{k}": v for k, v in corrupt_exif_jpegs(stored).items()}, "3_good.png": three_png, "3_cut.png": three_png[:300]}
    panel.upload.value = tuple(upload_entry(name, data, "image/jpeg") for name, data in files.items())
    panel.button.click()
    assert len(panel.result.children) == len(files) == len(panel.predictions)
    for name, data in files.items():  # the CLI's answer for the same bytes is the oracle
        (tmp_path / name).write_bytes(data)
    capsys.readouterr()
    assert run_cli([str(tmp_path / name) for name in files], None, "mnist", True) == 1
    by_cli = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    for p in panel.predictions:
        cli = by_cli[p["name"]]
        assert ("error" in p) == ("error" in cli) and p.get("error") == cli.get("error"), p["name"]
        assert p.get("probabilities") == cli.get("probabilities"), p["name"]
    assert [p.get("digit") for p in panel.predictions] == [3, 3, 3, None]
    cards = panel.result.children
    picture = next(w for w in _walk(cards[0]) if isinstance(w, widgets.Image))
    assert Image.open(io.BytesIO(picture.value)).size[0] > Image.open(io.BytesIO(picture.value)).size[1]  # upright: landscape
    assert "3_cut.png" in cards[3].value and panel.predictions[3]["error"] in cards[3].value


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


# --------------------------------------------------------------------------------------------
# Importing the module


def test_import_loads_neither_training_nor_a_model():
    code = ("import sys, labkit.widgets; "
            "assert 'labkit.train' not in sys.modules, 'labkit.widgets imported labkit.train'; "
            "assert 'labkit.predict' not in sys.modules, 'labkit.widgets imported labkit.predict'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------
# DrawPad


@pytest.fixture(scope="module")
def pad():
    return DrawPad()


# Drawn-style canvases: (keyword arguments of drawing_png). Sizes are in canvas pixels.
CANVASES = {
    "black_on_white": {},
    "white_on_black": dict(ink=255, paper=0),
    "thin": dict(width=5),
    "thick": dict(width=40, box=(60, 40, 160, 200)),
    "off_centre": dict(box=(10, 150, 60, 110), width=12),
    "tiny": dict(box=(200, 20, 14, 24), width=3),
    "wide_rgba_transparent": dict(size=(600, 300), box=(400, 60, 120, 180), ink=(20, 40, 200, 255),
                                  paper=(0, 0, 0, 0), mode="RGBA"),
}


@pytest.mark.parametrize("canvas", list(CANVASES))
def test_drawn_digits_are_recognised(pad, canvas):
    got = []
    for digit in range(10):
        pad.image = drawing_png(digit, **CANVASES[canvas])
        got.append(pad.prediction.get("digit"))  # set before the assignment returned
    assert got == list(range(10)), f"{canvas}: predicted {got}"


def test_prediction_is_the_photo_pipelines(pad):
    """The pad's prediction is Predictor.predict_file's on the same bytes (MNIST-style), and the
    view gets the 28x28 the model saw."""
    data = drawing_png(7, **CANVASES["off_centre"])
    count = pad.count
    pad.image = data
    oracle = labkit.predict.Predictor().predict_file(data, preprocessing="mnist")
    assert set(pad.prediction) == {"digit", "probabilities"}
    assert pad.prediction["digit"] == oracle["digit"] == 7
    assert pad.prediction["probabilities"] == pytest.approx(oracle["probabilities"], abs=1e-6)
    assert len(pad.prediction["probabilities"]) == 10 and sum(pad.prediction["probabilities"]) == pytest.approx(1)
    assert np.array_equal(pad.input28, oracle["input"])
    seen = np.asarray(Image.open(io.BytesIO(pad.seen)))
    assert seen.shape == (28, 28) and np.array_equal(seen, 255 - oracle["input"])  # dark ink on white
    assert pad.count == count + 1 and pad.python_ms > 0


@pytest.mark.parametrize("blank", [dict(), dict(paper=0), dict(paper=(0, 0, 0, 0), mode="RGBA"),
                                   dict(paper=(255, 255, 255, 0), mode="RGBA")],
                         ids=["white", "black", "transparent", "transparent_white"])
def test_empty_canvas_is_an_error_not_a_digit(pad, blank):
    pad.image = drawing_png(7)
    assert "digit" in pad.prediction
    pad.image = drawing_png(None, **blank)
    assert list(pad.prediction) == ["error"] and "no digit" in pad.prediction["error"]
    assert pad.seen == b"" and pad.input28 is None


def test_not_an_image_is_an_error(pad):
    pad.image = b"this is not a png"
    assert list(pad.prediction) == ["error"] and "not an image" in pad.prediction["error"]


def test_clear_resets_image_and_prediction(pad):
    pad.image = drawing_png(3)
    assert pad.prediction["digit"] == 3
    count = pad.count
    pad.clear()
    assert pad.image == b"" and pad.prediction == {} and pad.seen == b"" and pad.input28 is None
    assert pad.count == count + 1


def test_image_from_the_browser_is_deserialised(pad):
    """A drawing arrives from the frontend as a buffer (memoryview); set_state applies it as a comm
    message does."""
    pad.set_state({"image": memoryview(drawing_png(0))})
    assert isinstance(pad.image, bytes) and pad.prediction["digit"] == 0
    state = pad.get_state()
    assert set(state) >= {"image", "prediction", "seen", "count", "_esm", "_css"}


def test_prediction_leaves_torch_threads_as_they_were(pad):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pad.image = drawing_png(4)
        assert pad.prediction["digit"] == 4 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_drawpad_loads_the_model_once(monkeypatch):
    calls = []
    real = labkit.predict.load_checkpoint
    monkeypatch.setattr(labkit.predict, "load_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = DrawPad()
    for d in (1, 7, 0):
        p.image = drawing_png(d)
        assert p.prediction["digit"] == d
    assert len(calls) == 1


def test_drawpad_javascript_and_css_ship_in_the_package():
    js, css = PACKAGE_DIR / "static" / "drawpad.js", PACKAGE_DIR / "static" / "drawpad.css"
    pad_state = DrawPad().get_state()
    assert pad_state["_esm"] == js.read_text() and pad_state["_css"] == css.read_text()
    for text in (js.read_text(), css.read_text()):  # nothing fetched at run time
        assert "http://" not in text and "https://" not in text and "@import" not in text
        assert not re.search(r"^\s*import\s", text, flags=re.M)
    assert "pointerdown" in js.read_text() and "export default" in js.read_text()
    # pyproject's [tool.setuptools.package-data] labkit = [...] (read by hand: tomllib needs Python 3.11)
    section = (PROJECT_ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    package_data = re.findall(r'"([^"]+)"', re.search(r"^labkit\s*=\s*\[(.*?)\]", section, flags=re.M | re.S).group(1))
    for f in (js, css):
        rel = f.relative_to(PACKAGE_DIR).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in package_data), f"{rel} is not package data: {package_data}"


# --------------------------------------------------------------------------------------------
# TrainPanel


def _spy_epochs(panel) -> list[tuple]:
    """Record, at each finished epoch, the reporting thread and whether Train and Stop are disabled."""
    seen = []
    real = panel._epoch_done
    panel._epoch_done = lambda row: seen.append((threading.current_thread().name, panel.train_button.disabled,
                                                 panel.stop_button.disabled)) or real(row)
    return seen


def test_trainpanel_trains_through_train_runs_and_reports_progress(tmp_path, monkeypatch):
    from labkit.train import train_runs

    # the panel trains on device "auto": pinned to the CPU, where the panel's run and the direct one agree exactly
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    panel = TrainPanel(model="baseline", epochs=1, limit_train=640, out_dir=tmp_path / "panel")
    assert panel.state == "idle" and panel.stop_button.disabled and not panel.train_button.disabled
    seen = _spy_epochs(panel)
    panel.train_button.click()
    assert panel.wait(600) == "done", panel.status.value
    # Trained off the kernel's thread; while it ran, Train was disabled and Stop enabled.
    assert seen == [(panel.thread.name, True, False)] and panel.thread.name != threading.main_thread().name

    steps = 5  # 640 images, batches of 128
    assert panel.bar.max == steps and panel.bar.value == steps
    assert panel.step_label.value == f"epoch 1/1 · step {steps}/{steps}"
    assert not panel.train_button.disabled and panel.stop_button.disabled
    assert len(panel.rows) == 1
    row = panel.rows[0]
    assert f"{row['test_acc']:.4f}" in panel.table.value and f"{row['train_loss']:.4f}" in panel.table.value
    assert panel.curve.value[:8] == b"\x89PNG\r\n\x1a\n" and panel.curve.layout.display != "none"
    assert "done" in panel.status.value

    # The same numbers as labkit train's path gives the same config, and its files.
    direct = train_runs(recipe("baseline", epochs=1, limit_train=640), runs=1, out_dir=tmp_path / "cli", resume=False)
    want = direct["runs"][0]["epochs"][0]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert row[key] == pytest.approx(want[key], rel=1e-6), key
    saved = json.loads((tmp_path / "panel" / "metrics.json").read_text())
    assert saved["config"] == direct["config"] and len(saved["runs"][0]["epochs"]) == 1
    assert (tmp_path / "panel" / "run-seed1.pt").is_file() and (tmp_path / "panel" / "epochs.csv").is_file()


def test_trainpanel_stop_keeps_the_finished_epoch(tmp_path):
    out = tmp_path / "stopped"
    panel = TrainPanel(model="baseline", epochs=3, limit_train=640, out_dir=out)
    # Stop pressed as soon as the first epoch's numbers show (from the training thread's update).
    panel.table.observe(lambda _change: panel.stop_button.click() if len(panel.rows) == 1 else None, "value")
    panel.train_button.click()
    assert panel.train() is None  # a second press while it runs starts nothing
    assert panel.wait(600) == "stopped", panel.status.value
    assert len(panel.rows) == 1 and "stopped" in panel.status.value
    epoch, step, steps = panel.job.position
    assert epoch == 2 and step == 1 and steps == 5  # ended after the step under way
    assert panel.bar.value == steps + 1
    saved = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in saved["runs"][0]["epochs"]] == [1]
    assert saved["runs"][0]["epochs"][0]["test_acc"] == panel.rows[0]["test_acc"]
    ckpt = torch.load(out / "run-seed1.pt", weights_only=True)
    assert [e["epoch"] for e in ckpt["metrics"]["epochs"]] == [1]
    assert panel.metrics is not None and len(panel.metrics["runs"][0]["epochs"]) == 1
    assert not panel.train_button.disabled and panel.stop_button.disabled

    # Train again: a fresh run in the same folder, to its end.
    panel.epochs.value = 1
    panel.train_button.click()
    assert panel.wait(600) == "done" and len(panel.rows) == 1


def test_trainpanel_shows_a_training_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    panel = TrainPanel(model="baseline", epochs=1, limit_train=640, out_dir=blocker)
    panel.train_button.click()
    assert panel.wait(600) == "error"
    assert panel.error is not None and "training failed" in panel.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_trainpanel_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        TrainPanel(model="resnet")
