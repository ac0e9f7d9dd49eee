"""The report's statistics: best, worst, mean and std of final accuracies, as rows and as text."""
from __future__ import annotations

import numpy as np

SPLITS = (("train", "Training accuracy"), ("test", "Test accuracy"))
TABLE_HEADER = ["", "best", "worst", "mean", "std (n−1)"]


def accuracy_stats(values) -> dict:
    """best, worst, mean and sample standard deviation (n-1) of a list of accuracies."""
    v = np.asarray(values, dtype=float)
    return {"best": float(v.max()), "worst": float(v.min()), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": len(v)}


def summarize(metrics: dict) -> dict:
    """The report's table from final epochs: {"train": stats, "test": stats}."""
    finals = [r["epochs"][-1] for r in metrics["runs"] if r["epochs"]]
    return {split: accuracy_stats([f[f"{split}_acc"] for f in finals]) for split in ("train", "test")}


def table_rows(metrics: dict, label: str, report: dict | None = None) -> list[list]:
    """[name, best, worst, mean, std] rows of the report's table, the report's own rows beside when given."""
    stats = summarize(metrics)
    rows = []
    for split, name in SPLITS:
        s = stats[split]
        rows.append([f"{name} — {label}", s["best"], s["worst"], s["mean"], s["std"]])
        if report:
            r = report[split]
            rows.append([f"{name} — the report", r["best"], r["worst"], r["mean"], r["std"]])
    return rows


def format_table(metrics: dict, report: dict | None = None) -> str:
    """Per-run final numbers, then best/worst/mean/std rows (with the report's beside them), as text."""
    lines = [f"{'seed':>6} {'train acc':>10} {'test acc':>10} {'s/epoch':>8}"]
    for r in metrics["runs"]:
        if r["epochs"]:
            f = r["epochs"][-1]
            sec = np.median([e["seconds"] for e in r["epochs"]])
            lines.append(f"{r['seed']:>6} {f['train_acc']:>10.4f} {f['test_acc']:>10.4f} {sec:>8.2f}")
    lines += ["", f"{'':<34} {'best':>8} {'worst':>8} {'mean':>9} {'std (n-1)':>10}"]
    for name, best, worst, mean, std in table_rows(metrics, metrics["config"]["model"], report):
        lines.append(f"{name:<34} {best:>8.4f} {worst:>8.4f} {mean:>9.5f} {std:>10.6f}")
    return "\n".join(lines)


def per_digit_accuracy(probs, y) -> np.ndarray:
    """(runs, 10): the accuracy of each run on the test images of each digit; probs (runs, N, 10), y (N,)."""
    pred, y = np.asarray(probs).argmax(-1), np.asarray(y)
    return np.stack([(pred[:, y == d] == d).mean(1) for d in range(10)], 1)
