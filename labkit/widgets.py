"""The upload-and-predict panel of notebook 04 (ipywidgets 8), testable without a browser."""
from __future__ import annotations

import html
import io

import ipywidgets as widgets
import numpy as np
from PIL import Image, ImageOps

from .predict import Predictor, target_from_name
from .preprocess import ImageError, open_image, to_gray

THUMB = 112  # side of the pictures shown, in screen pixels


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _thumbnail(content: bytes, name: str) -> bytes:
    """PNG of the uploaded picture as a viewer shows it (EXIF-rotated, alpha over white)."""
    img, _ = open_image(content, name)
    img = ImageOps.exif_transpose(img)
    if img.mode not in ("RGB", "L"):  # any other mode: the grayscale the pipeline starts from
        img = Image.fromarray(np.round(to_gray(img) * 255).astype(np.uint8))
    img.thumbnail((4 * THUMB, 4 * THUMB))
    return _png(img)


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

    def __init__(self, checkpoint=None, preprocess: str = "mnist", **kwargs):
        self.predictor = Predictor(checkpoint)  # once, not per prediction
        self.method = preprocess
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload images")
        self.button = widgets.Button(description="Predict", button_style="primary", icon="search")
        self.result = widgets.VBox(layout=widgets.Layout(margin="8px 0 0 0"))
        self.predictions: list[dict] = []
        self.button.on_click(self._on_click)
        title = widgets.HTML(
            f"<b>Upload digit images and press Predict</b> "
            f"<span style='color:#666'>(model: {html.escape(self.predictor.model_name)}, "
            f"preprocessing: {html.escape(preprocess)})</span>")
        super().__init__([title, widgets.HBox([self.upload, self.button]), self.result], **kwargs)

    def predict(self, files: list[tuple[str, bytes]]) -> list[dict]:
        """Predict [(name, bytes)] and show them; returns (and stores) the predictions."""
        preds, cards = [], []
        for name, content in files:
            r = self.predictor.predict_file(content, name=name, preprocess=self.method)
            if "error" in r:
                preds.append({"name": name, "error": r["error"]})
                cards.append(widgets.HTML(
                    f"<div style='color:#a40000;padding:4px'>&#9888; <b>{html.escape(name)}</b>: "
                    f"{html.escape(r['error'])}</div>"))
                continue
            preds.append({"name": name, "digit": r["digit"], "probabilities": r["probabilities"]})
            cards.append(self._card(name, content, r))
        if not files:
            cards.append(widgets.HTML("<i>Upload one or more images first, then press Predict.</i>"))
        self.predictions = preds
        self.result.children = cards
        return preds

    def _card(self, name: str, content: bytes, r: dict) -> widgets.Widget:
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
        except (ImageError, OSError, ValueError):
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
