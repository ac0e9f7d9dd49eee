"""What a run leaves on disk: provenance, metrics.json and epochs.csv, written atomically."""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
import platform
import secrets
import subprocess
from pathlib import Path

import numpy as np
import torch

from .config import PROJECT_ROOT
from .data import MNIST_SHA256
from .device import cuda_versions, device_name
from .safeio import WRITE_PROBLEMS as _WRITE_PROBLEMS, ReadRefused, read_json

CSV_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "seconds")


class MetricsError(ValueError):
    """A metrics.json that cannot be read or does not have the shape labkit writes."""


class WriteError(OSError):
    """A file that could not be written (disk full, read-only, no permission); one line naming it."""

    def __init__(self, err: int, problem: str, path):
        super().__init__(err, problem, str(path))
        self.problem, self.path = problem, str(path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.problem}"


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


def _write_problem(e: BaseException, folder: Path) -> tuple[int, str] | None:
    """(errno, words) when a failed write is one of _WRITE_PROBLEMS, else None."""
    seen = set()
    while e is not None and id(e) not in seen:  # an OSError may sit under another library's error
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_PROBLEMS:
            return e.errno, _WRITE_PROBLEMS[e.errno]
        e = e.__cause__ or e.__context__
    with contextlib.suppress(OSError):  # torch's writer reports a full disk as "unexpected pos"
        if os.statvfs(folder).f_bavail == 0:
            return errno.ENOSPC, _WRITE_PROBLEMS[errno.ENOSPC]
    return None


def _write_bytes(path: Path, data: bytes) -> None:
    """Create path (which must not exist) holding data, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Write path atomically: `write` is the bytes or text to write, or a function write(tmp) that
    creates tmp; either way a temporary file of this writer alone (pid and a random suffix, same
    folder) is flushed to disk, then renamed over path. A crash leaves the old file or the new one;
    a failure removes the temporary file and, for a full disk, a read-only or unwritable folder
    and the like, raises WriteError with one line."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if callable(write):
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            _write_bytes(tmp, write.encode("utf-8") if isinstance(write, str) else bytes(write))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        problem = _write_problem(e, path.parent) if isinstance(e, Exception) else None
        if problem is not None:
            raise WriteError(problem[0], problem[1], path) from None
        raise


def finite_json(obj):
    """obj with every NaN or infinite float turned into None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):  # numpy scalars: as the Python number they hold
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_json(path, obj) -> None:
    """Write strict JSON atomically (NaN and infinities as null): a run killed mid-write leaves the previous file intact."""
    atomic_write(path, json.dumps(finite_json(obj), indent=1, allow_nan=False))


def write_csv(metrics: dict, path) -> None:
    """Every run's per-epoch numbers as one CSV table (model, seed, epoch, losses, accuracies, seconds)."""
    lines = [",".join(["model", "seed", "epoch", *CSV_KEYS])]
    for r in metrics["runs"]:
        for e in r["epochs"]:
            lines.append(",".join([metrics["config"]["model"], str(r["seed"]), str(e["epoch"]),
                                   *("" if e[k] is None else repr(e[k]) for k in CSV_KEYS)]))
    atomic_write(path, "\n".join(lines) + "\n")


EPOCH_KEYS = ("epoch", *CSV_KEYS)  # what every epoch row of a metrics.json holds (numbers; null for a diverged run)


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _shape_problem(data) -> str | None:
    """What keeps `data` from being a metrics.json as labkit writes it, or None."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("runs"), list):
        return "not the shape labkit writes ({config, runs: [{seed, epochs}]})"
    for i, r in enumerate(data["runs"], 1):
        if not isinstance(r, dict) or isinstance(r.get("seed"), bool) or not isinstance(r.get("seed"), int) \
                or not isinstance(r.get("epochs"), list):
            return f"run {i} is not the shape labkit writes ({{seed, epochs: [...]}})"
        for j, e in enumerate(r["epochs"], 1):
            if not isinstance(e, dict):
                return f"run {i} (seed {r['seed']}), epoch row {j} is not a mapping"
            missing = [k for k in EPOCH_KEYS if k not in e]
            if missing:
                return f"run {i} (seed {r['seed']}), epoch row {j} has no {', '.join(missing)}"
            bad = [k for k in EPOCH_KEYS if not _is_number(e[k])]
            if bad:
                return f"run {i} (seed {r['seed']}), epoch row {j}: {', '.join(bad)} not a number or null"
    return None


def load_metrics(path) -> dict:
    """A metrics.json as labkit writes it: {config, runs: [{seed, epochs: [...]}, ...]}, read with
    safeio's bounds (regular file, size limit, strict JSON); MetricsError with one line otherwise."""
    path = Path(path)
    try:
        data = read_json(path, what="a metrics.json")
    except ReadRefused as e:
        raise MetricsError(f"{path}: cannot be read ({e.problem})") from None
    problem = _shape_problem(data)
    if problem:
        raise MetricsError(f"{path}: {problem}")
    return data
