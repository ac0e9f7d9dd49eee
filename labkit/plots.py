"""Figures and tables the notebooks show: digits, curves, the ten-run table, confusion matrices."""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, MaxNLocator
import numpy as np

from . import stats


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
    return np.array([e[key] for e in run["epochs"]], dtype=float)  # a diverged run's nulls as NaN


def curves(metrics: dict, title: str = "", report_counting: bool = False, reference: dict | None = None,
           beside: dict | None = None, beside_label: str = "", fig=None):
    """Accuracy and loss per epoch, train and test, for every run (thin), with their mean and a +-1 std band.

    reference: {"train": acc, "test": acc} drawn as dotted horizontal lines (the report's published means);
    beside: another metrics dict whose mean curves are drawn in grey for comparison (e.g. a shipped run);
    fig: an empty matplotlib Figure to draw into (default: a new pyplot figure, which Jupyter shows).
    """
    runs = [r for r in metrics["runs"] if r["epochs"]]
    n = min(len(r["epochs"]) for r in runs)
    x = np.arange(1, n + 1)
    fig = fig if fig is not None else plt.figure(figsize=(12, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        for ax, key in ((ax_acc, f"{split}_acc"), (ax_loss, f"{split}_loss")):
            vals = np.stack([_epochs(r, key)[:n] for r in runs])  # (runs, epochs)
            if len(runs) > 1:
                for v in vals:
                    ax.plot(x, v, color=color, alpha=0.3, lw=0.7, marker="." if n <= 3 else None)
                m, s = vals.mean(0), vals.std(0, ddof=1)
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.25, lw=0,
                                label=f"{split}: mean of {len(runs)} runs ± 1 std (runs thin)")
                ax.plot(x, m, color=color, lw=2, marker="o" if n <= 3 else None)
            else:
                ax.plot(x, vals[0], color=color, lw=2, marker="o", ms=3, label=split)
            if report_counting and len(runs) == 1:
                rc = np.array([e["report_counting"][key] for e in runs[0]["epochs"]])
                ax.plot(x, rc, color=color, lw=1, ls="--", label=f"{split}, as the report's code counts it")
            if beside is not None:
                other = [r for r in beside["runs"] if r["epochs"]]
                k = min(len(r["epochs"]) for r in other)
                ax.plot(np.arange(1, k + 1), np.stack([_epochs(r, key)[:k] for r in other]).mean(0),
                        color=color, lw=1, alpha=0.7, ls="-.", label=f"{split}, {beside_label}")
            if reference is not None and key.endswith("_acc"):
                ax.axhline(reference[split], color=color, lw=1, ls=":",
                           label=f"{split}, the report's published mean ({reference[split]:.3f})")
    ax_acc.set_title("accuracy"), ax_loss.set_title("loss")
    ax_acc.set_ylabel("accuracy (fraction correct)"), ax_loss.set_ylabel("cross-entropy (log scale)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        if n <= 12 and beside is None:
            ax.set_xticks(range(1, n + 1)), ax.set_xlim(0.5, n + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LiveCurves:
    """Training progress that redraws one curves figure in place after each epoch (Jupyter), as a Progress does."""

    def __init__(self, progress, title: str = "", **curve_kw):
        self.progress, self.title, self.kw = progress, title, curve_kw
        self.rows: list[dict] = []
        self.handle = None

    def start_run(self, run_index: int, seed: int) -> None:
        self.progress.start_run(run_index, seed)

    def batch(self, epoch: int, step: int, steps: int) -> None:
        self.progress.batch(epoch, step, steps)

    def epoch_done(self, row: dict) -> None:
        from IPython.display import Image, display

        self.progress.epoch_done(row)  # the log keeps every epoch's line
        self.rows.append(row)
        fig = curves({"runs": [{"epochs": self.rows}]}, title=self.title, **self.kw)
        picture = Image(data=figure_png(fig))
        plt.close(fig)
        if self.handle is None:
            self.handle = display(picture, display_id=True)
        else:
            self.handle.update(picture)


def figure_png(fig, dpi: int = 90) -> bytes:
    """A figure as PNG bytes."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


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
    """Counts per (true, predicted) digit; colour shows the mistakes only (the diagonal would swamp them)."""
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    im = ax.imshow(off, cmap="Reds", vmin=0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="misclassified test images")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=8 if i != j else 7,
                        color="0.45" if i == j else ("white" if off[i, j] > off.max() / 2 else "black"))
    ax.set_xticks(range(10)), ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit"), ax.set_ylabel("true digit"), ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def per_digit_bars(y_true, probs_by_model: dict):
    """Test accuracy per digit for each model: mean over runs, with the spread of runs as error bars."""
    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(probs_by_model)
    rows = {}
    for k, (name, probs) in enumerate(probs_by_model.items()):  # probs: (runs, N, 10)
        acc = stats.per_digit_accuracy(probs, y)  # (runs, 10)
        rows[name] = acc
        err = acc.std(0, ddof=1) if len(acc) > 1 else None
        ax.bar(np.arange(10) + (k - (len(probs_by_model) - 1) / 2) * width, acc.mean(0), width, yerr=err, capsize=2,
               label=f"{name} (mean of {len(acc)} run{'s' if len(acc) > 1 else ''})")
    lo = min(a.mean(0).min() for a in rows.values())
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.set_xticks(range(10)), ax.set_xlabel("true digit"), ax.set_ylabel("test accuracy of that digit")
    ax.set_title("Per-digit test accuracy"), ax.grid(axis="y", alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, rows


def image_grid(images, titles, cols: int = 8, title: str = "", cmap="RdBu_r"):
    """Small images (filters, weight maps, saliency) side by side; "RdBu_r" (one name, or one per image)
    is drawn on a colour scale symmetric around 0 (red +, blue -), any other map on the image's range."""
    images = [np.asarray(a, dtype=float) for a in images]
    cmaps = [cmap] * len(images) if isinstance(cmap, str) else list(cmap)
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.25, rows * 1.45), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, a, t, cm in zip(axes.ravel(), images, titles, cmaps):
        lim = np.abs(a).max() or 1.0
        ax.imshow(a, cmap=cm, vmin=-lim if cm == "RdBu_r" else None, vmax=lim if cm == "RdBu_r" else None)
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
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


def sweep_accuracy(sweep: dict, field: str = "lr", mark=None, title: str = ""):
    """A sweep's final accuracy against one numeric grid field (log x): each seed a dot, the mean a line,
    ±1 std (n-1) a band; diverged trials as red crosses on the floor."""
    xs = sweep["grid"][field]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    at = lambda x: [t for t in sweep["trials"] if (t.get("point") or t["config"])[field] == x]
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        per_x = [[t["epochs"][-1][f"{split}_acc"] for t in at(x) if not t.get("diverged")] for x in xs]
        mean = np.array([np.mean(v) if v else np.nan for v in per_x])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_x])
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.plot(xs, mean, "-o", color=color, label=f"{split} accuracy, mean of seeds (band: ±1 std)")
        for x, v in zip(xs, per_x):
            ax.plot([x] * len(v), v, ".", color=color, alpha=0.6, markersize=5)
    diverged = [x for x in xs for t in at(x) if t.get("diverged")]
    if diverged:
        ax.plot(diverged, [0.01] * len(diverged), "x", color="tab:red", markersize=8,
                label=f"diverged (loss not finite): {len(diverged)} trial(s)")
    if mark is not None:
        ax.axvline(mark, color="gray", linestyle="--", linewidth=1, label=f"{field} = {mark:g} (the report's choice)")
    ax.set_xscale("log")
    ax.set_xlabel(f"{'learning rate' if field == 'lr' else field} (log scale)")
    ax.set_ylabel("final-epoch accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or f"{sweep['model']}: {len(sweep['seeds'])} seed(s) per {field}, "
                          f"{sweep['base_config'].get('epochs', 'several')} epoch(s)")
    fig.tight_layout()
    return fig


def ladder_figure(sweep: dict, rungs: list[str], title: str = ""):
    """Final test accuracy per rung (every run a dot, the mean with its 95 % t interval) above the seconds
    each run took (training and evaluation, mean over runs, log axis)."""
    from .grid import trials_of

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    xs = np.arange(len(rungs))
    for x, rung in zip(xs, rungs):
        trials = [t for t in trials_of(sweep, "rung", rung) if not t.get("diverged")]
        accs = np.array([t["epochs"][-1]["test_acc"] for t in trials])
        jitter = np.linspace(-0.12, 0.12, len(accs)) if len(accs) > 1 else np.zeros(len(accs))
        top.plot(x + jitter, 100 * accs, ".", color="tab:blue", alpha=0.55, markersize=6)
        if len(accs) > 1:
            lo, hi = stats.mean_interval(accs)
            top.errorbar(x, 100 * accs.mean(), yerr=[[100 * (accs.mean() - lo)], [100 * (hi - accs.mean())]],
                         fmt="o", color="black", capsize=4, markersize=5)
        diverged = len(trials_of(sweep, "rung", rung)) - len(trials)
        if diverged:
            top.annotate(f"{diverged} diverged", (x, 100 * (accs.min() if len(accs) else 0.5)), fontsize=7,
                         color="tab:red", ha="center", va="top")
        secs = [t["wall_seconds"] for t in trials if t.get("wall_seconds")]
        if secs:
            bottom.bar(x, np.mean(secs), color="tab:gray", width=0.6)
            bottom.text(x, np.mean(secs), f"{np.mean(secs):.0f}", ha="center", va="bottom", fontsize=7)
    top.set_ylabel("final test accuracy (%)")
    top.grid(axis="y", alpha=0.3)
    top.set_title(title or "The ablation ladder: each rung adds one change (dots: runs; black: mean, 95 % interval)")
    bottom.set_yscale("log")
    bottom.set_ylabel("seconds per run")
    bottom.set_xticks(xs, rungs, rotation=30, ha="right")
    fig.tight_layout()
    return fig


def frontier_figure(rows: list[dict], published=(), title: str = ""):
    """Final test accuracy against training seconds per run (log axis): every run a dot, each recipe's mean with
    its 95 % t interval; the points of one model joined in order of cost (a model's budgets); published figures
    as dashed lines, labelled as published."""
    fig, ax = plt.subplots(figsize=(10.5, 5.8))
    colors = dict(zip(sorted({r["model"] for r in rows if r["runs"]}), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    joined = False  # a model with several budgets, drawn as a line with a legend entry
    for model in colors:
        mine = sorted((r for r in rows if r["runs"] and r["model"] == model), key=lambda r: r["train_seconds"])
        for r in mine:
            accs = 100 * np.asarray(r["test_acc"])
            ax.plot(np.full(len(accs), r["train_seconds"]), accs, ".", color=colors[model], alpha=0.35, markersize=5)
            lo, hi = r["ci95"]
            err = [[100 * (r["mean"] - lo)], [100 * (hi - r["mean"])]] if r["runs"] > 1 else None
            ax.errorbar(r["train_seconds"], 100 * r["mean"], yerr=err, fmt="o", color=colors[model], capsize=3,
                        markersize=6, markeredgecolor="black")
            ax.annotate(f" {r['point']}", (r["train_seconds"], 100 * r["mean"]), fontsize=8, va="bottom")
        if len(mine) > 1:
            joined = True
            ax.plot([r["train_seconds"] for r in mine], [100 * r["mean"] for r in mine], "-", color=colors[model],
                    alpha=0.6, label=f"{model} CNN, {len(mine)} budgets")
    for label, acc, *_ in published:
        ax.axhline(100 * acc, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(f"published: {label} {100 * acc:.2f} %", (1.0, 100 * acc), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=7, color="dimgray")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, 100, not 10^1, 10^2
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.set_xlabel("training seconds per run (log scale)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    if joined:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Cost against accuracy (dots: runs; circles: mean with 95 % interval)")
    fig.tight_layout()
    return fig
