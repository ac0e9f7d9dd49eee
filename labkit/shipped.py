"""The shipped results: each protocol's runs (metrics.json, epochs.csv, test-set probabilities) in
data/runs/<name>/, a SHA-256 manifest, and results.json, the one place the headline figures live.

`labkit ship SRC NAME` ships a folder `labkit train --runs 10 --out SRC` wrote (or, with --point, one point of
a sweep); `labkit readme`
rewrites the README's results table from results.json.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from .config import DATA_DIR, display_path
from .recipes import REPORT_TABLE
from .records import atomic_write, save_json
from .runfolder import EPOCHS_CSV, METRICS, SHIPPED_DIR, RunFolder
from .stats import per_digit_accuracy, summarize

RUNS_DIR = SHIPPED_DIR
SWEEPS_DIR = DATA_DIR / "sweeps"  # shipped sweeps: the learning-rate grids, the ablation ladder, the frontier
MANIFEST = RUNS_DIR / "SHA256SUMS"
RESULTS = RUNS_DIR / "results.json"
# recipe -> its shipped ten-run protocol; "best" ships the frontier's ten runs of it (data/runs/README.md)
SHIPPED = {"baseline": "baseline-e50-fp32", "improved": "improved-e5-fp32", "best": "improved-e20-bf16"}
LABELS = {"baseline": "the report's network, its recipe", "improved": "improved model",
          "best": "improved model, the best recipe"}
PROBS = "test_probabilities.npz"  # (runs, 10000, 10) float32 softmax of each run's final model


class ResultsError(ValueError):
    """A shipped result is missing or does not match its manifest."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _where(root: Path | None) -> tuple[Path, Path]:
    """(folder, its SHA256SUMS): the shipped runs by default, or another shelf such as SWEEPS_DIR."""
    return (RUNS_DIR, MANIFEST) if root is None else (root, root / "SHA256SUMS")


def manifest(root: Path | None = None) -> dict[str, str]:
    """{path relative to the folder: SHA-256} as its SHA256SUMS lists them."""
    _, sums = _where(root)
    if not sums.is_file():
        return {}
    pairs = (line.split("  ", 1) for line in sums.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def verify(name: str | None = None, root: Path | None = None) -> list[str]:
    """The manifest's files (of one protocol or sweep, or all) that exist and match; ResultsError otherwise."""
    folder, sums = _where(root)
    checked = []
    for rel, digest in sorted(manifest(root).items()):
        if name is not None and not rel.startswith(f"{name}/"):
            continue
        path = folder / rel
        if not path.is_file():
            raise ResultsError(f"{path}: listed in {sums.name} but missing")
        if _sha256(path) != digest:
            raise ResultsError(f"{path}: SHA-256 differs from {sums.name} (the file was changed)")
        checked.append(rel)
    if name is not None and not checked:
        have = ", ".join(protocols(root)) or "none"
        raise ResultsError(f"nothing shipped named {name!r} in {display_path(folder)} (have: {have})")
    return checked


def protocols(root: Path | None = None) -> list[str]:
    """Names of what a folder ships, e.g. ['baseline-e50-fp32', 'improved-e5-fp32'] in data/runs."""
    return sorted({rel.split("/", 1)[0] for rel in manifest(root)})


def _update_manifest(root: Path | None, name: str) -> None:
    folder, sums = _where(root)
    kept = {rel: d for rel, d in manifest(root).items() if not rel.startswith(f"{name}/")}
    kept.update({f"{name}/{p.name}": _sha256(p) for p in sorted((folder / name).iterdir()) if p.is_file()})
    atomic_write(sums, lambda p: Path(p).write_text("".join(f"{d}  {rel}\n" for rel, d in sorted(kept.items()))))


def load_sweep(name: str) -> dict:
    """{"sweep": sweep.json, "probs": (trials, 10000, 10) float64, NaN for a diverged trial} of a shipped sweep."""
    from .safeio import read_json

    verify(name, SWEEPS_DIR)
    sweep = read_json(SWEEPS_DIR / name / "sweep.json", what="a sweep.json")
    probs = np.load(SWEEPS_DIR / name / PROBS)["probs"].astype(np.float64)
    return {"sweep": sweep, "probs": probs}


def _probabilities(runs: list[tuple[Path, list]]) -> np.ndarray:
    """(runs, 10000, 10) float32 test-set probabilities of each (checkpoint, the epochs recorded for it);
    ResultsError when a checkpoint is not the run its record says."""
    import torch

    from .checkpoint import load_checkpoint
    from .data import mnist_tensors
    from .predict import predict_proba

    x_test = mnist_tensors(limit_train=1)["x_test"]
    probs = []
    for path, epochs in runs:
        model, ckpt = load_checkpoint(path)
        if ckpt["metrics"]["epochs"] != epochs:
            raise ResultsError(f"{path} is not the run its record says")
        with torch.no_grad():
            probs.append(predict_proba(model, x_test, bool(ckpt["config"]["normalize"])).numpy().astype(np.float32))
    return np.stack(probs)


def sweep_probabilities(sweep: dict) -> np.ndarray:
    """(trials, 10000, 10) float32 test-set probabilities of a sweep's trials, from each trial's checkpoint."""
    return _probabilities([(RunFolder(t["dir"]).checkpoint(t["seed"]), t["epochs"]) for t in sweep["trials"]])


def ship_sweep(src, name: str) -> Path:
    """Copy a finished sweep (sweep.json, sweep.csv) from src into data/sweeps/name with each trial's test-set
    probabilities (float16, from its checkpoint), trial folders named relative to the project; update SHA256SUMS."""
    from .safeio import read_json

    src, dst = Path(src), SWEEPS_DIR / name
    sweep = read_json(src / "sweep.json", what="a sweep.json")
    if len(sweep["trials"]) != sweep["trials_requested"]:
        raise ResultsError(f"{src}: not finished ({len(sweep['trials'])} of {sweep['trials_requested']} trials)")
    probs = sweep_probabilities(sweep)
    for t in sweep["trials"]:
        t["dir"] = display_path(t["dir"])
    sweep["provenance"] = {**sweep["provenance"], "shipped_from": display_path(src)}
    dst.mkdir(parents=True, exist_ok=True)
    save_json(dst / "sweep.json", sweep)
    shutil.copyfile(src / "sweep.csv", dst / "sweep.csv")
    atomic_write(dst / PROBS, lambda p: np.savez_compressed(open(p, "wb"), probs=probs.astype(np.float16)))
    _update_manifest(SWEEPS_DIR, name)
    return dst


def load(name: str) -> dict:
    """{"metrics": metrics.json, "probs": (runs, 10000, 10) float64} of a shipped protocol, verified."""
    verify(name)
    metrics = RunFolder(RUNS_DIR / name).metrics()
    probs = np.load(RUNS_DIR / name / PROBS)["probs"].astype(np.float64)
    return {"metrics": metrics, "probs": probs}


def headline(name: str, y_test) -> dict:
    """The figures a reader quotes, computed from a shipped protocol's files."""
    shipped = load(name)
    m, probs = shipped["metrics"], shipped["probs"]
    y = np.asarray(y_test)
    single = (probs.argmax(2) == y).mean(1)  # (runs,)
    per_digit = per_digit_accuracy(probs, y)  # (runs, 10)
    stats = summarize(m)
    return {
        "model": m["config"]["model"], "runs": len(m["runs"]), "epochs": m["config"]["epochs"],
        "precision": sorted({r.get("precision", "fp32") for r in m["runs"]}),
        "train": stats["train"], "test": stats["test"],
        "ensemble_test_acc": float((probs.mean(0).argmax(1) == y).mean()),
        "per_class_test_acc": [float(v) for v in per_digit.mean(0)],
        "test_acc_from_probabilities": [float(v) for v in single],
        "wall_minutes": round(sum(r.get("wall_seconds", 0.0) for r in m["runs"]) / 60, 1),
        "git_commit": m["provenance"]["git_commit"], "device_name": m["provenance"]["device_name"],
        "torch": m["provenance"]["torch"], "cpu_threads": m["provenance"]["cpu_threads"],
    }


def command(metrics: dict) -> str:
    """The `labkit train` command that makes these runs (only what differs from the model's recipe)."""
    from .recipes import recipe

    c, default = metrics["config"], recipe(metrics["config"]["model"]).to_dict()
    flags = {"epochs": "--epochs", "limit_train": "--limit-train", "lr": "--lr", "batch_size": "--batch-size",
             "momentum": "--momentum", "weight_decay": "--weight-decay", "precision": "--precision", "seed": "--seed"}
    extra = "".join(f" {flag} {c[k]}" for k, flag in flags.items() if c.get(k, default[k]) != default[k])
    return f"labkit train --model {c['model']} --runs {len(metrics['runs'])}{extra}"


def write_results() -> dict:
    """Recompute results.json from every shipped protocol (plus the report's own table)."""
    from .data import load_mnist

    y = load_mnist("test")[1]
    out = {"report": REPORT_TABLE, **{name: headline(name, y) for name in protocols()}}
    save_json(RESULTS, out)
    return out


def read_results() -> dict:
    """results.json as committed."""
    from .safeio import read_json

    return read_json(RESULTS, what="results.json")


def ship(src, name: str) -> Path:
    """Copy a finished protocol (metrics.json, epochs.csv) from src into data/runs/name, add the test-set
    probabilities of each run's final checkpoint, and update SHA256SUMS and results.json."""
    src, dst = RunFolder(src), RUNS_DIR / name
    metrics = src.metrics()
    unfinished = [r["seed"] for r in metrics["runs"] if len(r["epochs"]) != metrics["config"]["epochs"]]
    if unfinished or len(metrics["runs"]) != metrics.get("runs_requested", len(metrics["runs"])):
        raise ResultsError(f"{src.path}: not finished (seeds {unfinished} cut short, or fewer runs than requested)")
    dst.mkdir(parents=True, exist_ok=True)
    for f in (METRICS, EPOCHS_CSV):
        shutil.copyfile(src.path / f, dst / f)
    return _shelve(name, [(src.checkpoint(r["seed"]), r["epochs"]) for r in metrics["runs"]])


def _shelve(name: str, runs: list[tuple[Path, list]]) -> Path:
    """The rest of shipping a protocol whose metrics.json and epochs.csv are in data/runs/name: the test-set
    probabilities of each (checkpoint, its epochs), then SHA256SUMS and results.json."""
    dst = RUNS_DIR / name
    probs = _probabilities(runs)
    atomic_write(dst / PROBS, lambda p: np.savez_compressed(open(p, "wb"), probs=probs))
    _update_manifest(None, name)
    write_results()
    return dst


def ship_point(src, point: str, name: str) -> Path:
    """Ship the runs of one point of a finished sweep (point "FIELD=VALUE", e.g. the frontier's "recipe=best") into
    data/runs/name as one protocol, as ship() ships a `labkit train --runs N` folder: one metrics.json of every
    seed's run, epochs.csv, the test-set probabilities; then SHA256SUMS and results.json."""
    from .config import differing_fields
    from .safeio import read_json

    src = Path(src)
    field, eq, value = point.partition("=")
    if not eq:
        raise ResultsError(f"point {point!r} is not FIELD=VALUE (e.g. recipe=best)")
    sweep = read_json(src / "sweep.json", what="a sweep.json")
    trials = sorted((t for t in sweep["trials"] if str((t.get("point") or {}).get(field)) == value), key=lambda t: t["seed"])
    if not trials:
        have = sorted({str(v) for t in sweep["trials"] for k, v in (t.get("point") or {}).items() if k == field})
        raise ResultsError(f"{src}: no finished trial of {point} (have: {', '.join(have) or 'none'})")
    folders = [RunFolder(t["dir"]) for t in trials]
    metrics = [f.metrics() for f in folders]
    for t, m in zip(trials, metrics):
        run = m["runs"][0]
        if t.get("diverged") or len(run["epochs"]) != m["config"]["epochs"]:
            raise ResultsError(f"{t['dir']}: not finished (diverged, or cut short)")
        if differing_fields(m["config"], metrics[0]["config"]):
            raise ResultsError(f"{t['dir']}: another config than {trials[0]['dir']} "
                               f"({', '.join(differing_fields(m['config'], metrics[0]['config']))})")
    merged = {"config": metrics[0]["config"], "runs_requested": len(trials),
              "provenance": {**metrics[0]["provenance"], "shipped_from": f"{display_path(src)} ({point})"},
              "runs": [m["runs"][0] for m in metrics]}
    (RUNS_DIR / name).mkdir(parents=True, exist_ok=True)
    RunFolder(RUNS_DIR / name).write(merged)
    return _shelve(name, [(f.checkpoint(t["seed"]), m["runs"][0]["epochs"]) for f, t, m in zip(folders, trials, metrics)])


def readme_table(results: dict | None = None) -> str:
    """The README's ten-run table (the report's rows beside each shipped protocol's), from results.json."""
    results = results if results is not None else read_results()
    rows = ["| | best | worst | mean | std (n−1) | ensemble |", "| --- | --- | --- | --- | --- | --- |"]
    for split, name in (("train", "Training accuracy"), ("test", "Test accuracy")):
        r = results["report"][split]
        rows.append(f"| {name} — the report | {r['best']:.4f} | {r['worst']:.4f} | {r['mean']:.5f} | {r['std']:.6f} | |")
        for model, protocol in SHIPPED.items():
            h = results[protocol]
            s = h[split]
            label = LABELS[model]
            ens = f"{h['ensemble_test_acc']:.4f}" if split == "test" else ""
            rows.append(f"| {name} — {label} ({h['runs']} runs × {h['epochs']} epochs, {'/'.join(h['precision'])}) "
                        f"| {s['best']:.4f} | {s['worst']:.4f} | {s['mean']:.5f} | {s['std']:.6f} | {ens} |")
    return "\n".join(rows)
