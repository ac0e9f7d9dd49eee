"""What a run leaves on disk: provenance, metrics.json and epochs.csv, written atomically."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from .config import PROJECT_ROOT
from .data import MNIST_SHA256
from .device import cuda_versions, device_name

CSV_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "seconds")


class WriteError(OSError):
    """A file could not be written (no space, read-only, no permission); the message is one line."""


class MetricsError(ValueError):
    """A metrics.json that cannot be read or does not have the shape labkit writes."""


def git_commit() -> str:
    """HEAD of the project checkout, with '-dirty' if it has changes; 'unknown' outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device | str = "cpu") -> dict:
    """Where a result came from: commit, versions, data checksums, device (on CUDA: CUDA, cuDNN, flags), time."""
    prov = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "data_sha256": dict(MNIST_SHA256),  # verified on every load_mnist
        "device": str(device),
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if str(device).startswith("cuda"):
        prov.update(cuda_versions(device))
    return prov


def atomic_write(path, write) -> None:
    """write(tmp) then rename over path, flushed to disk first: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_json(path, obj) -> None:
    """Write JSON atomically: a run killed mid-write leaves the previous file intact."""
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1)))


def write_csv(metrics: dict, path) -> None:
    """Every run's per-epoch numbers as one CSV table (model, seed, epoch, losses, accuracies, seconds)."""
    lines = [",".join(["model", "seed", "epoch", *CSV_KEYS])]
    for r in metrics["runs"]:
        for e in r["epochs"]:
            lines.append(",".join([metrics["config"]["model"], str(r["seed"]), str(e["epoch"]),
                                   *(repr(e[k]) for k in CSV_KEYS)]))
    atomic_write(path, lambda p: Path(p).write_text("\n".join(lines) + "\n"))


def load_metrics(path) -> dict:
    """A metrics.json as labkit writes it: {config, runs: [{seed, epochs: [...]}, ...]}; MetricsError otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetricsError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    ok = (isinstance(data, dict) and isinstance(data.get("config"), dict) and isinstance(data.get("runs"), list)
          and all(isinstance(r, dict) and isinstance(r.get("seed"), int) and isinstance(r.get("epochs"), list)
                  and all(isinstance(e, dict) and "test_acc" in e for e in r["epochs"]) for r in data["runs"]))
    if not ok:
        raise MetricsError(f"{path}: not the shape labkit writes ({{config, runs: [{{seed, epochs}}]}})")
    return data
