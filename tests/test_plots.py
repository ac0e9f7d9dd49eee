"""labkit.plots: figures draw what their data says; tables escape text and format numbers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np

from labkit import plots


def _metrics(runs=3, epochs=4):
    rng = np.random.default_rng(0)
    return {"runs": [{"seed": s, "epochs": [{k: float(v) for k, v in zip(
        ("train_acc", "test_acc", "train_loss", "test_loss"), rng.uniform(0.1, 0.9, 4))} | {"epoch": e + 1}
        for e in range(epochs)]} for s in range(runs)]}


def test_confusion_matrix_against_counting_by_hand():
    y, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    cm = plots.confusion_matrix(y, p, n=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_curves_band_is_mean_plus_minus_sample_std():
    m = _metrics(runs=3, epochs=4)
    fig = plots.curves(m, title="t")
    ax_acc = fig.axes[0]
    band = ax_acc.collections[0].get_paths()[0].vertices  # the first band: train accuracy
    vals = np.array([[e["train_acc"] for e in r["epochs"]] for r in m["runs"]])
    hi = vals.mean(0) + vals.std(0, ddof=1)
    assert np.allclose(np.sort(band[:, 1].max() * np.ones(1)), hi.max())
    assert len(ax_acc.lines) == 2 * (3 + 1)  # per split: each run thin, and the mean
    assert ax_acc.get_xlabel() == "epoch" and fig._suptitle.get_text() == "t"


def test_html_table_formats_and_escapes():
    html = plots.html_table([["<b>", 0.123456789, ("html", "<i>raw</i>")]], ["a&b", "x", "y"], caption="c", digits=3)
    assert "&lt;b&gt;" in html and "0.123<" in html and "<i>raw</i>" in html and "a&amp;b" in html
    assert html.count("<tr>") == 2 and "<caption>c</caption>" in html


def test_accuracy_by_group_and_verdict():
    assert plots.accuracy_by_group(["a", "b", "a", "a"], [True, False, False, True]) == {"a": 2 / 3, "b": 0.0}
    assert "#1a7f37" in plots.verdict_html(3, 3) and "#c00000" in plots.verdict_html(3, 4)
    assert plots.verdict_html(5, None) == "<b>5</b>"


def test_png_data_uri_is_a_png_of_the_picture():
    import base64
    import io

    from PIL import Image

    arr = np.zeros((28, 28), np.uint8)
    arr[10:18, 12:16] = 255
    uri = plots.png_data_uri(arr, invert=True)
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    back = np.asarray(img)
    assert img.format == "PNG" and back.shape == (28, 28) and back[12, 13] == 0 and back[0, 0] == 255
