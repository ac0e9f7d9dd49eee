"""The notebook GUI, testable without a browser: PredictPanel (upload and predict, notebook 04),
DrawPad (draw a digit and watch the prediction, notebook 04) and TrainPanel (train with a button,
a progress bar and live numbers, notebook 02).

Importing this module loads neither a model nor the training code (labkit.predict and labkit.train
are imported when a widget needs them), so notebooks and tests import it cheaply.
"""
from __future__ import annotations

import contextlib
import html
import io
import time
from pathlib import Path

import anywidget
import ipywidgets as widgets
import numpy as np
import traitlets
from ipywidgets.widgets.trait_types import bytes_serialization
from PIL import Image

from . import plots  # imported here, on the kernel's thread (pyplot), not first in a training thread
from .config import MODEL_NAMES, PACKAGE_DIR, display_path
from .recipes import recipe
from .preprocess import as_viewed
from .progress import number_text  # a diverged run's nulls print as "nan"

THUMB = 112  # side of the pictures shown, in screen pixels
STATIC_DIR = PACKAGE_DIR / "static"  # the DrawPad's JavaScript and CSS, shipped as package data


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _thumbnail(content: bytes, name: str) -> bytes:
    """PNG of the uploaded picture as a viewer shows it (EXIF-rotated, alpha over white), read as
    the prediction reads it (preprocess.read_upright)."""
    img = as_viewed(content, name)
    img.thumbnail((4 * THUMB, 4 * THUMB))
    return _png(img)


def _error_card(name: str, error: str) -> widgets.Widget:
    """The card of a file that could not be predicted: its name and why, as `labkit predict` prints it."""
    return widgets.HTML(f"<div style='color:#a40000;padding:4px'>&#9888; <b>{html.escape(name)}</b>: "
                        f"{html.escape(error)}</div>")


def _model_view(arr28: np.ndarray) -> bytes:
    """PNG of the 28x28 input, enlarged, dark ink on white as the digit was written."""
    img = Image.fromarray(255 - np.asarray(arr28, dtype=np.uint8))
    return _png(img.resize((THUMB, THUMB), Image.Resampling.NEAREST))


def probability_bars_html(probabilities, digit: int) -> str:
    """Ten horizontal bars, one per digit, the predicted one highlighted."""
    rows = []
    for d, p in enumerate(probabilities):
        color = "#2a7ab9" if d == digit else "#9aa5b1"
        rows.append(
            f"<div style='display:flex;align-items:center;gap:4px;height:13px;font-size:11px'>"
            f"<span style='width:10px;text-align:right'>{d}</span>"
            f"<span style='display:inline-block;width:120px;height:9px;background:#eee'>"
            f"<span style='display:block;width:{100 * float(p):.1f}%;height:9px;background:{color}'></span></span>"
            f"<span>{100 * float(p):.1f}%</span></div>")
    return "".join(rows)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """[(name, bytes)] of a FileUpload value: ipywidgets 8's tuple of dicts (or dict-likes) whose
    content is a memoryview or bytes; ipywidgets 7's {name: {"metadata", "content"}} also works."""
    if not value:
        return []
    if isinstance(value, dict):  # ipywidgets 7
        items = [{"name": k, **({"content": v.get("content")} if isinstance(v, dict) else {"content": v})}
                 for k, v in value.items()]
    else:
        items = list(value)
    out = []
    for i, item in enumerate(items):
        get = (lambda k, _it=item: _it.get(k)) if hasattr(item, "get") else (lambda k, _it=item: getattr(_it, k, None))
        name = str(get("name") or f"upload {i + 1}")
        content = get("content")
        out.append((name, bytes(content) if content is not None else b""))
    return out


class PredictPanel(widgets.VBox):
    """Upload images, press Predict: for each file the picture, the 28x28 the model sees, the
    predicted digit with its probability bars, and the target when the file name starts with one.

    The model loads once, here. ``predictions`` holds, after each click, one dict per uploaded
    file: {"name", "digit", "probabilities"} or {"name", "error"}.
    """

    def __init__(self, checkpoint=None, preprocessing: str = "mnist", **kwargs):
        from .predict import Predictor

        self.predictor = Predictor(checkpoint)  # once, not per prediction
        self.method = preprocessing
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload images")
        self.button = widgets.Button(description="Predict", button_style="primary", icon="search")
        self.result = widgets.VBox(layout=widgets.Layout(margin="8px 0 0 0"))
        self.predictions: list[dict] = []
        self.button.on_click(self._on_click)
        title = widgets.HTML(
            f"<b>Upload digit images and press Predict</b> "
            f"<span style='color:#666'>(model: {html.escape(self.predictor.model_name)}, "
            f"preprocessing: {html.escape(preprocessing)})</span>")
        super().__init__([title, widgets.HBox([self.upload, self.button]), self.result], **kwargs)

    def predict(self, files: list[tuple[str, bytes]]) -> list[dict]:
        """Predict [(name, bytes)] and show them, one card per file (an unreadable one says why, as
        `labkit predict` does); returns (and stores) the predictions."""
        preds, cards = [], []
        for name, content in files:
            try:
                r = self.predictor.predict_file(content, name=name, preprocessing=self.method)
                card = None if "error" in r else self._card(name, content, r)
            except Exception as e:  # one file's failure must not cost the others their cards
                r = {"name": name, "error": f"cannot use this file ({type(e).__name__}: {e})".splitlines()[0]}
            if "error" in r:
                preds.append({"name": name, "error": r["error"]})
                cards.append(_error_card(name, r["error"]))
                continue
            preds.append({"name": name, "digit": r["digit"], "probabilities": r["probabilities"]})
            cards.append(card)
        if not files:
            cards.append(widgets.HTML("<i>Upload one or more images first, then press Predict.</i>"))
        self.predictions = preds
        self.result.children = cards
        return preds

    def _card(self, name: str, content: bytes, r: dict) -> widgets.Widget:
        from .predict import target_from_name

        target = target_from_name(name)
        digit, p = r["digit"], r["probabilities"]
        verdict = ""
        if target is not None:
            ok = target == digit
            verdict = (f"<div>target (from the file name): <b>{target}</b> "
                       f"<span style='color:{'#1a7f37' if ok else '#a40000'}'>{'&#10003;' if ok else '&#10007;'}</span></div>")
        text = widgets.HTML(
            f"<div style='font-size:12px'><div><b>{html.escape(name)}</b></div>"
            f"<div style='font-size:20px'>predicted <b>{digit}</b> "
            f"<span style='font-size:12px'>({100 * p[digit]:.1f}%)</span></div>{verdict}"
            f"{probability_bars_html(p, digit)}</div>")
        try:
            picture = widgets.Image(value=_thumbnail(content, name), format="png",
                                    layout=widgets.Layout(max_width=f"{THUMB}px", max_height=f"{THUMB}px",
                                                          object_fit="contain"))
        except Exception:  # the prediction stands; only the picture cannot be shown
            picture = widgets.HTML("<i>(no preview)</i>")
        seen = widgets.Image(value=_model_view(r["input"]), format="png", width=THUMB, height=THUMB)
        labelled = lambda w, caption: widgets.VBox([w, widgets.HTML(f"<small>{caption}</small>")],
                                                   layout=widgets.Layout(margin="0 12px 0 0"))
        return widgets.HBox([labelled(picture, "uploaded"), labelled(seen, "what the model sees (28&times;28)"), text],
                            layout=widgets.Layout(border="1px solid #ddd", padding="4px", margin="2px 0",
                                                  align_items="flex-start"))

    def _on_click(self, _button=None) -> None:
        try:
            files = uploaded_files(self.upload.value)
        except Exception as e:  # an upload the panel cannot read: say so in the panel
            self.predictions = []
            self.result.children = [widgets.HTML(f"<div style='color:#a40000'>cannot read the upload: "
                                                 f"{html.escape(str(e))}</div>")]
            return
        self.predict(files)


# --------------------------------------------------------------------------------------------
# DrawPad: draw a digit, see the prediction


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one thread here: for one 28x28 image a second thread only adds a barrier, which
    waits for a busy core (165 ms instead of 7 ms measured on a loaded 2-core machine). The setting
    is per thread (OpenMP), so training in another thread keeps its threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DrawPad(anywidget.AnyWidget):
    """A canvas to draw a digit on (mouse, pen or finger) with the model's prediction beside it.

    After each stroke the browser sends the drawing as PNG bytes in ``image``; setting ``image``
    from Python (bytes of any picture) does the same. Either way, before the assignment returns,
    the picture goes through the MNIST-style pipeline of photos and ``prediction`` becomes
    ``{"digit", "probabilities": [10 floats]}``, or ``{"error": reason}`` when nothing usable is
    drawn; ``image = b""`` (the Clear button) resets it to ``{}``. The model loads once, here.
    """

    _esm = STATIC_DIR / "drawpad.js"
    _css = STATIC_DIR / "drawpad.css"
    image = traitlets.Bytes(b"").tag(sync=True, **bytes_serialization)
    prediction = traitlets.Dict().tag(sync=True)
    seen = traitlets.Bytes(b"").tag(sync=True, **bytes_serialization)  # PNG of the 28x28 the model saw
    python_ms = traitlets.Float(0.0).tag(sync=True)  # image set -> prediction, in the kernel
    count = traitlets.Int(0).tag(sync=True)  # predictions made; the view redraws when it changes

    def __init__(self, checkpoint=None, **kwargs):
        from .predict import Predictor

        self.predictor = Predictor(checkpoint)  # once, not per stroke
        self.input28: np.ndarray | None = None  # the last 28x28 the model saw
        super().__init__(**kwargs)

    @traitlets.observe("image")
    def _on_image(self, change) -> None:
        t0 = time.perf_counter()
        data = bytes(change["new"] or b"")
        seen, self.input28 = b"", None
        if not data:  # cleared
            prediction = {}
        else:
            with _one_torch_thread():
                r = self.predictor.predict_file(data, name="drawing", preprocessing="mnist")
            if "error" in r:
                prediction = {"error": r["error"]}
            else:
                prediction = {"digit": r["digit"], "probabilities": r["probabilities"]}
                self.input28 = r["input"]
                seen = _png(Image.fromarray(255 - np.asarray(r["input"], dtype=np.uint8)))  # dark ink on white
        with self.hold_sync():  # one message: the view redraws once, on `count`
            self.prediction = prediction
            self.seen = seen
            self.python_ms = round(1000 * (time.perf_counter() - t0), 2)
            self.count += 1

    def clear(self) -> None:
        """What the Clear button does."""
        self.image = b""


# --------------------------------------------------------------------------------------------
# TrainPanel: the report's training half


class TrainPanel(widgets.VBox):
    """The report's GUI, training half: Train, a progress bar over steps, each finished epoch's
    train/test loss and accuracy, a curve redrawn in place, and Stop.

    The view of a ``labkit.train.TrainingJob``: Train starts one (the path of ``labkit train``: one
    run, its run folder rewritten after every epoch) in a background thread, so the kernel stays
    responsive; Stop ends it after the current step with the finished epochs kept.
    ``out_dir`` None: a fresh outputs/train-MODEL-TIMESTAMP-PID per Train.
    """

    def __init__(self, model: str = "baseline", epochs: int = 1, limit_train: int | None = None,
                 out_dir=None, **kwargs):
        if model not in MODEL_NAMES:  # refused here, not when Train is pressed
            raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
        self.out_dir_arg = Path(out_dir) if out_dir not in (None, "") else None
        self.job = None  # the latest labkit.train.TrainingJob
        self._last_draw = 0.0

        box = dict(layout=widgets.Layout(width="auto"), style={"description_width": "initial"})
        self.model = widgets.Dropdown(options=MODEL_NAMES, value=model, description="model", **box)
        self.epochs = widgets.BoundedIntText(value=int(epochs), min=1, max=500, description="epochs",
                                             layout=widgets.Layout(width="130px"))
        self.limit_train = widgets.BoundedIntText(value=int(limit_train or 0), min=0, max=60000,
                                                  description="training images (0: all 60,000)",
                                                  layout=widgets.Layout(width="290px"), style={"description_width": "initial"})
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="steps",
                                       layout=widgets.Layout(width="420px"))
        self.step_label = widgets.Label("")
        self.status = widgets.HTML("<i>press Train</i>")
        self.table = widgets.HTML("")
        self.curve = widgets.Image(format="png", layout=widgets.Layout(display="none", max_width="720px"))
        for w, cls in [(self.bar, "labkit-train-progress"), (self.step_label, "labkit-train-step"),
                       (self.status, "labkit-train-status"), (self.table, "labkit-train-epochs"),
                       (self.curve, "labkit-train-curve")]:
            w.add_class(cls)
        self.train_button.on_click(lambda _b: self.train())
        self.stop_button.on_click(lambda _b: self.stop())
        title = widgets.HTML("<b>Train a model</b> <span style='color:#666'>(the same training as "
                             "<code>labkit train</code>, in the background: the notebook stays usable)</span>")
        super().__init__([title, widgets.HBox([self.model, self.epochs, self.limit_train]),
                          widgets.HBox([self.train_button, self.stop_button]),
                          widgets.HBox([self.bar, self.step_label]), self.status, self.table, self.curve], **kwargs)
        self.add_class("labkit-trainpanel")

    # the latest job's state, for callers and tests
    state = property(lambda self: self.job.state if self.job else "idle")
    rows = property(lambda self: self.job.rows if self.job else [])
    metrics = property(lambda self: self.job.metrics if self.job else None)
    error = property(lambda self: self.job.error if self.job else None)
    out_dir = property(lambda self: self.job.out_dir if self.job else None)
    thread = property(lambda self: self.job.thread if self.job else None)

    # -- buttons

    def train(self):
        """What Train does: start a TrainingJob in a background thread (returned); None while one runs."""
        if self.job is not None and self.job.running():
            return None
        from .runfolder import fresh_dir  # here, not at import: the panel costs nothing until used
        from .train import TrainingJob

        cfg = recipe(self.model.value, epochs=int(self.epochs.value), limit_train=int(self.limit_train.value) or None)
        self.job = TrainingJob(cfg, self.out_dir_arg or fresh_dir(f"train-{cfg.model}"),
                               on_step=self._show_step, on_epoch=self._epoch_done, on_end=self._ended)
        self.bar.value, self.bar.max, self.bar.bar_style = 0, 1, ""
        self.step_label.value, self.table.value = "", ""
        self.curve.layout.display = "none"
        self._set_controls(running=True)
        self._set_status(f"loading data for {cfg.model!r}, {cfg.epochs} epoch(s)…")
        return self.job.start()

    def stop(self) -> None:
        """What Stop does: training ends after the current step, finished epochs kept."""
        if self.job is not None and self.job.running():
            self.job.stop()
            self.stop_button.disabled = True
            self._set_status("stopping after the current step…")

    def wait(self, timeout: float | None = None) -> str:
        """Block until the training thread ends (or timeout); the panel's state."""
        return self.job.wait(timeout) if self.job is not None else "idle"

    # -- called from the training thread

    def _set_controls(self, running: bool) -> None:
        for w in (self.train_button, self.model, self.epochs, self.limit_train):
            w.disabled = running
        self.stop_button.disabled = not running

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _show_step(self, epoch: int, step: int, steps: int, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or step == steps or now - self._last_draw >= 0.1):  # ~10 updates a second, and each epoch's end
            return
        self._last_draw = now
        total = self.job.cfg.epochs * steps
        with self.bar.hold_sync():
            if self.bar.max != total:
                self.bar.max = total
            self.bar.value = (epoch - 1) * steps + step
        self.step_label.value = f"epoch {epoch}/{self.job.cfg.epochs} · step {step}/{steps}"
        if step == steps and not self.job.stopping():
            self._set_status(f"epoch {epoch}: evaluating on the 10,000 test images…")

    def _epoch_done(self, row: dict) -> None:
        self.table.value = epochs_table_html(self.job.rows)
        self.curve.value = curve_png(self.job.rows)
        self.curve.layout.display = ""
        if not self.job.stopping():
            self._set_status(f"epoch {row['epoch']} done")

    def _ended(self, job) -> None:
        where = f"<code>{html.escape(display_path(job.out_dir))}</code>"
        if job.state == "done":
            self.bar.bar_style = "success"
            last = job.rows[-1] if job.rows else {}
            self._set_status(f"done: {len(job.rows)} epoch(s) in {job.seconds:.1f} s, test accuracy "
                             f"{last.get('test_acc', float('nan')):.4f}; the run is in {where}")
        elif job.state == "stopped":
            epoch, step, steps = job.position
            if steps:
                self._show_step(epoch, step, steps, force=True)  # the bar where training stopped
            self.bar.bar_style = "warning"
            self._set_status(f"stopped on request after step {step}/{steps} of epoch {epoch}: {len(job.rows)} "
                             f"finished epoch(s) kept in {where}")
        else:
            e = job.error
            self.bar.bar_style = "danger"
            self._set_status(f"<span style='color:#a40000'>training failed: {html.escape(type(e).__name__)}: "
                             f"{html.escape(str(e).splitlines()[0] if str(e) else '')}</span>")
        self._set_controls(running=False)


def epochs_table_html(rows: list[dict]) -> str:
    """One table row per finished epoch: train/test loss and accuracy, seconds."""
    head = "".join(f"<th style='padding:1px 8px;text-align:right'>{h}</th>"
                   for h in ("epoch", "train loss", "train acc", "test loss", "test acc", "seconds"))
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:1px 8px;text-align:right'>{v}</td>" for v in (
            r["epoch"], *(number_text(r.get(k), ".4f") for k in ("train_loss", "train_acc", "test_loss", "test_acc")),
            number_text(r.get("seconds"), ".1f"))) + "</tr>"
        for r in rows)
    return f"<table style='font-size:12px;border-collapse:collapse'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def curve_png(rows: list[dict]) -> bytes:
    """PNG of accuracy and loss per finished epoch, train and test (plots.curves, drawn off pyplot)."""
    from matplotlib.figure import Figure  # not pyplot's: safe in the training thread, no figure left open

    return plots.figure_png(plots.curves({"runs": [{"epochs": rows}]}, fig=Figure(figsize=(8, 2.8))))
