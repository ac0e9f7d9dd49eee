"""Figures and tables the notebooks show: digits, curves, the ten-run table, confusion matrices."""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np


def digit_grid(images, labels, per_digit: int = 8, seed: int = 0):
    """A row of randomly drawn examples for each digit 0-9."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(10, per_digit, figsize=(per_digit * 0.8, 8.4))
    for d in range(10):
        idx = rng.choice(np.flatnonzero(labels == d), per_digit, replace=False)
        for j, i in enumerate(idx):
            ax = axes[d, j]
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(d), rotation=0, labelpad=10, fontsize=12)
    fig.suptitle("Training examples per digit")
    fig.tight_layout()
    return fig


def mean_and_histogram(images):
    """The mean image and the histogram of pixel values (log count)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    a.imshow(images.mean(0), cmap="gray_r")
    a.set_title("mean training image"), a.set_xticks([]), a.set_yticks([])
    counts = np.bincount(images.ravel(), minlength=256)
    b.bar(np.arange(256), counts, width=1.0, color="0.3")
    b.set_yscale("log"), b.set_xlabel("pixel value (raw 0-255, as the report fed them)"), b.set_ylabel("count")
    b.set_title("pixel histogram")
    fig.tight_layout()
    return fig


def _epochs(run, key):
    return np.array([e[key] for e in run["epochs"]])


def curves(metrics: dict, title: str = "", report_counting: bool = False):
    """Accuracy and loss per epoch, train and test, for every run (mean and +-1 std band if several)."""
    runs = [r for r in metrics["runs"] if r["epochs"]]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        for ax, key in ((ax_acc, f"{split}_acc"), (ax_loss, f"{split}_loss")):
            n = min(len(r["epochs"]) for r in runs)
            vals = np.stack([_epochs(r, key)[:n] for r in runs])
            x = np.arange(1, n + 1)
            if len(runs) > 1:
                dot = "." if n <= 3 else None  # a short run would be invisible as lines alone
                for v in vals:
                    ax.plot(x, v, color=color, alpha=0.25, lw=0.8, marker=dot)
                m, s = vals.mean(0), vals.std(0, ddof=1)
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.25)
                if n == 1:
                    ax.errorbar(x, m, yerr=s, color=color, fmt="o", capsize=6, label=f"{split} (mean of {len(runs)}, ±1 std)")
                else:
                    ax.plot(x, m, color=color, lw=2, label=f"{split} (mean of {len(runs)}, ±1 std)")
            else:
                ax.plot(x, vals[0], color=color, lw=2, marker="o", ms=3, label=split)
            if report_counting and len(runs) == 1:
                rc = np.array([e["report_counting"][key] for e in runs[0]["epochs"]])
                ax.plot(x, rc, color=color, lw=1, ls="--", label=f"{split}, as the report's code counts it")
    ax_acc.set_title("accuracy"), ax_loss.set_title("loss (cross-entropy)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
        if n <= 12:
            ax.set_xticks(range(1, n + 1)), ax.set_xlim(0.5, n + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def html_table(rows: list[list], header: list[str], caption: str = "", digits: int = 5) -> str:
    """A small HTML table for IPython.display.HTML: floats to `digits` decimals, cells given as
    ('html', text) inserted as raw HTML (pictures), everything else escaped."""
    def cell(v):
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "html":
            return v[1]
        return f"{v:.{digits}f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th style='text-align:center'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:center'>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def confusion_matrix(y_true, y_pred, n: int = 10) -> np.ndarray:
    """Counts, rows = true digit, columns = predicted digit."""
    return np.bincount(np.asarray(y_true) * n + np.asarray(y_pred), minlength=n * n).reshape(n, n)


def plot_confusion(cm: np.ndarray, title: str = "confusion matrix"):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    ax.imshow(off, cmap="Reds")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                    color="0.6" if i == j else ("white" if off[i, j] > off.max() / 2 else "black"))
    ax.set_xticks(range(10)), ax.set_yticks(range(10))
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    return fig


def mistakes_gallery(images, y_true, probs, max_images: int = 40, cols: int = 10):
    """Misclassified digits, most confident mistakes first: true, predicted, confidence."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != np.asarray(y_true))
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:max_images]
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{y_true[i]}→{pred[i]} {probs[i, pred[i]]:.2f}", fontsize=8)
    fig.suptitle(f"{len(wrong)} most confident mistakes (true→predicted, confidence)", fontsize=10)
    fig.tight_layout()
    return fig


# ---- notebook 04: custom digits (tables of pictures as HTML with embedded PNGs) ----


def png_data_uri(picture, max_side: int = 96, invert: bool = False) -> str:
    """data: URI of a PNG of a PIL Image or a uint8 array (a 28x28 is shown as is, enlarged by CSS)."""
    import base64
    import io as _io

    from PIL import Image as _Image

    img = picture if isinstance(picture, _Image.Image) else _Image.fromarray(
        (255 - np.asarray(picture, dtype=np.uint8)) if invert else np.asarray(picture, dtype=np.uint8))
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img = img.copy()
    img.thumbnail((max_side, max_side))
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(picture, size: int = 56, invert: bool = False) -> str:
    """<img> of a picture; 28x28 arrays are enlarged without smoothing, dark ink on white if invert."""
    style = f"width:{size}px;height:{size}px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc"
    return f"<img src='{png_data_uri(picture, invert=invert)}' style='{style}'>"


def verdict_html(predicted: int, target) -> str:
    """The predicted digit, green when it equals the target, red when not."""
    if target is None:
        return f"<b>{predicted}</b>"
    color = "#1a7f37" if predicted == target else "#c00000"
    return f"<b style='color:{color};font-size:15px'>{predicted}</b>"


def accuracy_by_group(groups, correct) -> dict:
    """{group: accuracy} of boolean `correct` per sample, groups in first-seen order."""
    out: dict = {}
    for g, c in zip(groups, correct):
        n, k = out.get(g, (0, 0))
        out[g] = (n + 1, k + int(bool(c)))
    return {g: k / n for g, (n, k) in out.items()}
