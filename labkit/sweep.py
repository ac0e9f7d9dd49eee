"""`labkit sweep`: a grid over TrainConfig fields and seeds, each trial one ordinary training run, on Ray Tune.

Ray Tune schedules the trials (resources per trial, retries of failed trials, result tables); each
trial calls `train_runs` exactly as `labkit train` does, into its own folder, so it has the same
metrics.json, checkpoint and provenance. Ray is imported only when a sweep runs, so `labkit --help`
stays fast.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import itertools
import json
import math
import os
import signal
import sys
import types
import typing
from pathlib import Path

from .config import DEVICES, MODEL_NAMES, OUTPUTS_DIR, PRECISIONS, ConfigError, TrainConfig, differing_fields, recipe

# Threads per trial: on this project's 2-core machine (shared with other work), two 1-thread trials
# side by side beat one 2-thread trial at a time: 4 baseline trials x 2 epochs x 60,000 images took
# 38-52 s against 179-207 s, 4 improved trials x 1 epoch x 6,000 images 44 s against 102 s (2-thread
# OpenMP kernels stall whenever another process takes one of the two cores).
DEFAULT_CPUS_PER_TRIAL = 1
DEFAULT_GPUS_PER_TRIAL = 0.25  # where the cluster has GPUs: four small trials share one
KILL_ONCE_ENV = "LABKIT_SWEEP_KILL_ONCE"  # test hook: the trial of this name SIGKILLs its worker once, mid-epoch
FINAL_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")
_NOT_IN_GRID = {"seed": "give seeds with --seeds (e.g. --seeds 1-3)",
                "model": "give the model with --model (each model has its own recipe)"}


class SweepError(ValueError):
    """A bad grid, seed list or sweep setting: reported before any trial starts."""


# ----------------------------------------------------------------------------- grid and seeds

def _parse_value(text: str, kind) -> object:
    """One grid value as the field's type; ValueError with a short reason."""
    t = text.strip()
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        if t.lower() in ("none", "null", "all"):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if t.lower() in ("true", "yes", "1"):
            return True
        if t.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"{text!r} is not a bool (true or false)")
    if kind is int:
        try:
            return int(t)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind is float:
        try:
            return float(t)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind is str and t:
        return t
    raise ValueError(f"{text!r} is not a value of type {getattr(kind, '__name__', kind)}")


def parse_grid(specs, base: TrainConfig | None = None) -> dict[str, list]:
    """["lr=1e-5,1e-4", ...] or {"lr": [1e-5, 1e-4]} -> {field: [typed values]}; all problems in one SweepError.

    Each value is parsed to its TrainConfig field's type and, with `base`, checked by TrainConfig itself.
    """
    hints = typing.get_type_hints(TrainConfig)
    problems, grid, items = [], {}, []
    if isinstance(specs, dict):
        items = [(str(k), v) for k, v in specs.items()]
    else:
        for spec in specs or []:
            key, eq, values = str(spec).partition("=")
            if not eq:
                problems.append(f"{spec!r} is not FIELD=V1,V2,...")
            else:
                items.append((key.strip(), values))
    for key, values in items:
        name = key.replace("-", "_")
        if name in _NOT_IN_GRID:
            problems.append(f"{name} cannot be a grid field: {_NOT_IN_GRID[name]}")
            continue
        if name not in hints:
            problems.append(f"unknown field {key!r} (TrainConfig fields: {', '.join(f for f in hints if f not in _NOT_IN_GRID)})")
            continue
        if name in grid:
            problems.append(f"{name} is given twice")
            continue
        texts = [s for s in values.split(",") if s.strip()] if isinstance(values, str) else \
            [str(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        if not texts:
            problems.append(f"{name} has an empty list of values")
            continue
        parsed = []
        for text in texts:
            try:
                value = _parse_value(text, hints[name])
                if base is not None:
                    base.replace(**{name: value})  # TrainConfig refuses values no run can use
            except (ValueError, ConfigError) as e:
                problems.append(f"{name}: {e}")
                continue
            if value in parsed:
                problems.append(f"{name} lists {value!r} twice")
            else:
                parsed.append(value)
        grid[name] = parsed
    if problems:
        raise SweepError("bad grid: " + "; ".join(problems))
    return grid


def parse_seeds(spec) -> list[int]:
    """"1-3" -> [1, 2, 3]; "1,4,7-8" -> [1, 4, 7, 8]; an int or a list of ints passes through."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        seeds = [spec]
    elif isinstance(spec, str):
        seeds = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, dash, hi = part.partition("-")
            try:
                a, b = int(lo), int(hi) if dash else int(lo)
            except ValueError:
                raise SweepError(f"bad seeds {spec!r}: {part!r} is not N or N-M") from None
            if b < a:
                raise SweepError(f"bad seeds {spec!r}: {part!r} counts down")
            seeds.extend(range(a, b + 1))
    else:
        seeds = list(spec)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise SweepError(f"bad seeds {spec!r}: not whole numbers")
    if not seeds:
        raise SweepError(f"bad seeds {spec!r}: no seed given")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"bad seeds {spec!r}: a seed is listed twice")
    if min(seeds) < 0:
        raise SweepError(f"bad seeds {spec!r}: seeds must be >= 0")
    return seeds


def _fmt(v) -> str:
    return v if isinstance(v, str) else repr(v)


def trial_name(point: dict, seed: int) -> str:
    """Folder (and Tune trial) name of a trial: its grid values and seed, e.g. 'lr=0.0001,seed=2'."""
    return ",".join([*(f"{k}={_fmt(v)}" for k, v in point.items()), f"seed={seed}"])


def plan(base: TrainConfig, grid: dict[str, list], seeds: list[int]) -> list[dict]:
    """Every trial of the sweep: grid points in the order given (the last field varying fastest), seeds innermost."""
    trials = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        for seed in seeds:
            cfg = base.replace(**point, seed=seed)
            trials.append({"name": trial_name(point, seed), "point": point, "seed": seed, "config": cfg.to_dict()})
    return trials


# ----------------------------------------------------------------------------- one trial (in a Ray worker)

def _trial(config: dict, specs: dict) -> None:
    """One trial on a Ray worker: train_runs into the trial's folder, reporting each epoch to Tune."""
    import torch
    from ray import tune

    from .progress import Progress
    from .train import train_runs

    spec = specs[config["name"]]
    torch.set_num_threads(spec["threads"])
    cfg = TrainConfig(**spec["config"])
    out = Path(spec["dir"])
    marker = out / ".killed-once"

    class TuneProgress(Progress):
        """Epoch lines to the driver's log, each epoch's numbers to Tune (its result table)."""

        def batch(self, epoch, step, steps):
            if spec["kill_once"] and not marker.exists():  # the test hook: this worker dies mid-epoch, once
                out.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"pid {os.getpid()} killed itself in epoch {epoch}, step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)

        def epoch_done(self, row):
            super().epoch_done(row)
            tune.report({"epoch": row["epoch"], **{k: row[k] for k in FINAL_KEYS}, "seconds": row["seconds"]})

    metrics = train_runs(cfg, runs=1, out_dir=out, resume=spec["resume"], progress=TuneProgress(1, cfg.epochs, live=False))
    record = _record(spec["name"], metrics["config"], metrics["runs"][0], out, metrics.get("provenance"))
    last = record["epochs"][-1]
    # The record travels back as a reported result: the driver needs no shared disk with the workers.
    tune.report({"epoch": last["epoch"], **{k: last[k] for k in FINAL_KEYS}, "record": json.dumps(record)})


def _record(name: str, config: dict, run: dict, trial_dir: Path, fallback_provenance=None) -> dict:
    """One trial as sweep.json lists it."""
    return {"name": name, "config": {**config, "seed": run["seed"]}, "seed": run["seed"], "epochs": run["epochs"],
            "precision": run.get("precision"), "wall_seconds": run.get("wall_seconds"),
            "provenance": run.get("provenance") or fallback_provenance, "dir": str(trial_dir)}


# ----------------------------------------------------------------------------- what is finished

def _same_config(a: dict, b: dict) -> bool:
    """Equal configs, seed included, device aside (a trial may run on any device)."""
    return not differing_fields(a, b, ignore=("device",))


def _finished_record(trial: dict, earlier: dict) -> dict | None:
    """The trial's record if it finished before: from the last sweep.json, else from its own metrics.json."""
    want, trial_dir = trial["config"], Path(trial["dir"])
    rec = earlier.get(trial["name"])
    if rec and _same_config(rec.get("config", {}), want) and len(rec.get("epochs", [])) == want["epochs"]:
        return {**rec, "dir": str(trial_dir)}  # the folder may have moved with its sweep
    try:
        m = json.loads((trial_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    for run in m.get("runs", []):
        if (run.get("seed") == trial["seed"] and len(run.get("epochs", [])) == want["epochs"]
                and _same_config({**m.get("config", {}), "seed": run["seed"]}, want)
                and (trial_dir / f"run-seed{trial['seed']}.pt").exists()):
            return _record(trial["name"], m["config"], run, trial_dir, m.get("provenance"))
    return None


def _foreign_config(trial: dict) -> str | None:
    """Which fields differ when the trial's folder already holds runs of another config (None if not)."""
    try:
        old = json.loads((Path(trial["dir"]) / "metrics.json").read_text())["config"]
        differ = differing_fields({**old, "seed": trial["seed"]}, trial["config"], ignore=("device",))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ", ".join(differ) or None


# ----------------------------------------------------------------------------- sweep.json, CSV, table

def summary(sweep: dict) -> list[dict]:
    """One row per grid point: its values, n (seeds finished), and mean and std (n-1) over seeds of each final metric."""
    from .stats import accuracy_stats

    grid = sweep["grid"]
    groups: dict[tuple, list[dict]] = {}
    for t in sweep["trials"]:
        groups.setdefault(tuple(t["config"][k] for k in grid), []).append(t["epochs"][-1])
    rows = []
    for values in itertools.product(*grid.values()):
        finals = groups.get(tuple(values), [])
        row = {**dict(zip(grid, values)), "n": len(finals)}
        for k in FINAL_KEYS:
            st = accuracy_stats([f[k] for f in finals]) if finals else {"mean": math.nan, "std": math.nan}
            row[k + "_mean"], row[k + "_std"] = st["mean"], st["std"]
        rows.append(row)
    return rows


def format_summary(sweep: dict) -> str:
    """The printed table: per grid point, mean ± std (n-1) over seeds of train and test accuracy."""
    grid = list(sweep["grid"])
    heads = [*grid, "seeds", "train acc (mean ± std)", "test acc (mean ± std)", "test loss (mean)"]
    body = []
    for r in summary(sweep):
        pm = lambda k: f"{r[k + '_mean']:.4f} ± {r[k + '_std']:.4f}" if r["n"] else "-"
        body.append([*(_fmt(r[k]) for k in grid), str(r["n"]), pm("train_acc"), pm("test_acc"),
                     f"{r['test_loss_mean']:.4f}" if r["n"] else "-"])
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(heads), *(line(b) for b in body)])


def _write_outputs(out: Path, sweep: dict) -> None:
    """sweep.json and sweep.csv (one line per finished trial: grid values, seed, final metrics)."""
    from .records import atomic_write, save_json

    save_json(out / "sweep.json", sweep)
    grid = list(sweep["grid"])
    lines = [",".join([*grid, "seed", "epochs", *FINAL_KEYS, "wall_seconds"])]
    for t in sweep["trials"]:
        f = t["epochs"][-1]
        lines.append(",".join([*(_fmt(t["config"][k]) for k in grid), str(t["seed"]), str(len(t["epochs"])),
                               *(repr(f[k]) for k in FINAL_KEYS), repr(t.get("wall_seconds"))]))
    atomic_write(out / "sweep.csv", lambda p: Path(p).write_text("\n".join(lines) + "\n"))


def load_sweep(out_dir) -> dict:
    """A sweep.json written by run()."""
    return json.loads((Path(out_dir) / "sweep.json").read_text())


def plot(sweep: dict, field: str = "lr", mark=None, title: str = ""):
    """Final accuracy against one numeric grid field (log x): each seed a dot, the mean a line, ±1 std (n-1) a band."""
    import matplotlib.pyplot as plt
    import numpy as np

    xs = sweep["grid"][field]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        per_x = [[t["epochs"][-1][f"{split}_acc"] for t in sweep["trials"] if t["config"][field] == x] for x in xs]
        mean = np.array([np.mean(v) if v else np.nan for v in per_x])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_x])
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.plot(xs, mean, "-o", color=color, label=f"{split} accuracy, mean of seeds (band: ±1 std)")
        for x, v in zip(xs, per_x):
            ax.plot([x] * len(v), v, ".", color=color, alpha=0.6, markersize=5)
    if mark is not None:
        ax.axvline(mark, color="gray", linestyle="--", linewidth=1, label=f"{field} = {mark:g} (the report's choice)")
    ax.set_xscale("log")
    ax.set_xlabel(f"{'learning rate' if field == 'lr' else field} (log scale)")
    ax.set_ylabel("final-epoch accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    seeds = sweep["seeds"]
    ax.set_title(title or f"{sweep['model']}: {len(seeds)} seed(s) per {field}, {sweep['base_config'].get('epochs', 'several')} epoch(s)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Ray

def _is_loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ray_env(address: str | None = None) -> dict[str, str]:
    """Environment for Ray: usage statistics off always; every Ray server on 127.0.0.1 unless the cluster is elsewhere."""
    env = {"RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}  # Ray's dedup merges different trials' epoch lines into one
    if _is_loopback(address):
        # Otherwise Ray swaps 127.0.0.1 for the machine's network address and listens on all
        # interfaces; as a one-machine "cluster" (its macOS/Windows mode) it binds 127.0.0.1 only.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Ray's head probes cloud metadata servers (169.254.169.254, metadata.google.internal) and a
        # `ray start` head posts a "usage disabled" note, whatever RAY_USAGE_STATS_ENABLED says. Its
        # HTTP goes through `requests`, which honours these: a dead loopback proxy for all but loopback.
        dead = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
        env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead,
                   no_proxy="127.0.0.1,localhost,::1", NO_PROXY="127.0.0.1,localhost,::1")
    token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
        or (Path.home() / ".ray" / "auth_token").exists()
    if address is not None and "RAY_AUTH_MODE" not in os.environ and token:
        # Ray turns token authentication on by itself only for a cluster it finds, never for an
        # explicit address; a `ray start` cluster made where a token exists requires it.
        env["RAY_AUTH_MODE"] = "token"
    return env


@contextlib.contextmanager
def _ray_environment(address: str | None):
    """Set ray_env() for the block (Ray's processes inherit it), then restore the caller's environment."""
    values = ray_env(address)
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    consts = sys.modules.get("ray._private.ray_constants")
    old_cluster = getattr(consts, "ENABLE_RAY_CLUSTER", None)
    if consts is not None:  # ray imported earlier in this process read the variable then
        consts.ENABLE_RAY_CLUSTER = values.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0"
    try:
        yield
    finally:
        if consts is not None:
            consts.ENABLE_RAY_CLUSTER = old_cluster
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at HOST:PORT (ray.init would retry for minutes); "auto" is left to Ray."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (ValueError, OSError) as e:
        raise SweepError(f"no Ray cluster answers at {address!r} ({e}); start one with `ray start --head` "
                         "or leave out --address for a Ray instance on this machine") from None


def _cpus_here() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _start_ray(address: str | None):
    """Connect to the cluster at `address`, or start a Ray instance on this machine sized to it (127.0.0.1 only)."""
    import ray

    try:  # Ray caches the auth token per process: a notebook may reach another cluster than before
        from ray._raylet import AuthenticationTokenLoader
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
    if address is not None:
        _check_reachable(address)
        ray.init(address=address, logging_level="WARNING")
        return ray
    import torch

    ray.init(num_cpus=_cpus_here(), num_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
             include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=256 * 2**20,  # trials pass only small records; Ray's default is 30 % of RAM
             logging_level="WARNING")
    where = {n["NodeManagerAddress"] for n in ray.nodes()}
    if where != {"127.0.0.1"}:
        ray.shutdown()
        raise RuntimeError(f"the local Ray instance came up on {sorted(where)}, not 127.0.0.1 only")
    return ray


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped (Ctrl-C) with trials unfinished; finished ones are on disk."""


def run(model: str = "baseline", grid=None, seeds="1", epochs: int | None = None, limit_train: int | None = None,
        out_dir=None, address: str | None = None, cpus_per_trial: int | None = None,
        gpus_per_trial: float | None = None, max_failures: int = 2, resume: bool = True,
        device: str | None = None, precision: str | None = None, verbose: int = 1, **overrides) -> dict:
    """Run the sweep; returns the sweep.json dict plus "failed" and "retried". A bad setting raises SweepError before anything starts.

    grid: {"lr": [1e-5, 1e-4]} or ["lr=1e-5,1e-4"]; seeds: "1-3", an int or a list. Each trial is
    `train_runs(config, 1, out_dir=OUT/trials/NAME)`, as `labkit train --out ... --seed S --lr ...` runs it.
    Trials finished earlier (in OUT/sweep.json or their own metrics.json) are not run again.
    Ctrl-C stops the sweep (SweepInterrupted) with the finished trials saved.
    """
    try:
        base = recipe(model, epochs=epochs, limit_train=limit_train, device=device, precision=precision, **overrides)
    except (ConfigError, TypeError) as e:
        raise SweepError(f"bad settings: {e}") from None
    grid = parse_grid(grid or {}, base)
    seeds = parse_seeds(seeds)
    if cpus_per_trial is not None and (isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int)
                                       or cpus_per_trial < 1):
        raise SweepError(f"cpus_per_trial must be a whole number >= 1, not {cpus_per_trial!r}")
    if gpus_per_trial is not None and not (gpus_per_trial >= 0 and (gpus_per_trial <= 1 or float(gpus_per_trial).is_integer())):
        raise SweepError(f"gpus_per_trial must be a fraction in 0..1 or a whole number, not {gpus_per_trial!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise SweepError(f"max_failures must be a whole number >= 0, not {max_failures!r}")
    out = Path(out_dir) if out_dir is not None else OUTPUTS_DIR / "sweeps" / f"{model}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise SweepError(f"{out} exists and is not a folder")
    trials = plan(base, grid, seeds)
    if address is None and any(t["config"]["device"] == "cuda" for t in trials):
        from .device import DeviceError, resolve_device

        try:
            resolve_device("cuda")  # this machine is the cluster: it must have the GPU
        except DeviceError as e:
            raise SweepError(str(e)) from None
    for t in trials:
        t["dir"] = str(out / "trials" / t["name"])

    earlier = {}
    if resume and (out / "sweep.json").is_file():
        try:
            earlier = {t["name"]: t for t in load_sweep(out).get("trials", [])}
        except (ValueError, KeyError, TypeError):
            earlier = {}
    done = {t["name"]: rec for t in trials if resume and (rec := _finished_record(t, earlier)) is not None}
    pending = [t for t in trials if t["name"] not in done]
    if resume:
        foreign = {t["name"]: why for t in pending if (why := _foreign_config(t))}
        if foreign:
            name, why = next(iter(foreign.items()))
            raise SweepError(f"{out / 'trials'} holds {len(foreign)} trial(s) of another config (e.g. {name}: differs "
                             f"in {why}); choose another --out, or retrain into it with --no-resume")

    from .records import provenance

    prov = provenance("cpu")
    prov.update(device="per trial (trials[].provenance)", device_name=None)
    sweep = {"model": model, "grid": grid, "seeds": seeds,
             "base_config": {k: v for k, v in base.to_dict().items() if k not in grid and k != "seed"},
             "provenance": prov, "trials_requested": len(trials), "trials": []}
    retried: dict[str, int] = {}
    errors: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)

    def save():
        sweep["trials"] = [done[t["name"]] for t in trials if t["name"] in done]  # in plan order, whatever finished first
        _write_outputs(out, sweep)

    print(f"sweep of {model!r}: {len(trials)} trial(s) = {len(trials) // len(seeds)} grid point(s) x {len(seeds)} "
          f"seed(s); {len(done)} finished earlier, {len(pending)} to run; writing {out / 'sweep.json'}", flush=True)
    save()
    if pending:
        with _ray_environment(address):
            ours = not _ray_initialized()  # else: the caller's own ray.init(), left running
            ray = _start_ray(address) if ours else sys.modules["ray"]
            try:
                _tune(ray, address, pending, cpus_per_trial, gpus_per_trial, max_failures, resume, verbose, out,
                      sweep, done, retried, errors, save)
            finally:
                save()
                if ours:
                    ray.shutdown()
    failed = [t["name"] for t in pending if t["name"] not in done and t["name"] in errors]
    missing = [t["name"] for t in pending if t["name"] not in done and t["name"] not in errors]
    sweep.update(failed=failed, retried=retried)
    print(format_summary(sweep), flush=True)
    if missing:
        raise SweepInterrupted(f"sweep stopped with {len(missing)} trial(s) unfinished; the {len(done)} finished stay "
                               f"in {out}: run the same command again to complete the rest")
    return sweep


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _tune(ray, address, pending, cpus_per_trial, gpus_per_trial, max_failures, resume, verbose, out, sweep, done,
          retried, errors, save) -> None:
    """The pending trials as one Tune experiment: resources, retries, result tables."""
    from ray import tune

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    cpt = cpus_per_trial or DEFAULT_CPUS_PER_TRIAL
    gpt = gpus_per_trial if gpus_per_trial is not None else (DEFAULT_GPUS_PER_TRIAL if gpus else 0)
    if cpt > cpus or gpt > gpus:
        raise SweepError(f"a trial asks for {cpt} CPU(s) and {gpt:g} GPU(s), the Ray cluster has {cpus:g} and {gpus:g}")
    if gpt == 0 and any(t["config"]["device"] == "cuda" for t in pending):
        raise SweepError("device 'cuda' asked for, but the trials get no GPU (give --gpus-per-trial)")
    sweep["provenance"].update(ray=ray.__version__, address=address or "local instance (127.0.0.1)",
                               cluster_cpus=cpus, cluster_gpus=gpus, cpus_per_trial=cpt, gpus_per_trial=gpt,
                               max_failures=max_failures)
    print(f"ray {ray.__version__}, {sweep['provenance']['address']}: {cpus:g} CPUs, {gpus:g} GPUs; per trial {cpt} "
          f"CPU(s){f' and {gpt:g} GPU' if gpt else ''}: up to {int(cpus // cpt)} trials at once", flush=True)
    kill = os.environ.get(KILL_ONCE_ENV)
    specs = {t["name"]: {**t, "threads": cpt, "resume": resume, "kill_once": t["name"] == kill} for t in pending}

    class Collect(tune.Callback):
        """Takes each finished trial's record as Tune reports it, and keeps sweep.json current."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "record" in result:
                rec = json.loads(result["record"])
                done[rec["name"]] = {**rec, "retries": retried.get(rec["name"], 0)}  # failed attempts before this one
                save()

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = trial.config["name"]
            retried[name] = retried.get(name, 0) + 1
            print(f"trial {name} failed (failure {retried[name]} of at most {max_failures}); Tune retries it", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            errors[trial.config["name"]] = "failed after retries"

    # The trial's name is its only Tune parameter (short tables); its spec travels by with_parameters.
    trainable = tune.with_resources(tune.with_parameters(_trial, specs=specs), {"cpu": cpt, "gpu": gpt})
    tuner = tune.Tuner(
        trainable,
        param_space={"name": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(trial_name_creator=lambda t: t.config["name"],
                                    trial_dirname_creator=lambda t: t.config["name"],
                                    reuse_actors=True),  # the next trial skips the worker's start and imports
        run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=verbose,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[Collect()]),
    )
    for r in tuner.fit():
        if r.error is not None and r.config and r.config.get("name") not in done:
            errors[r.config["name"]] = f"{type(r.error).__name__}: {str(r.error).splitlines()[0] if str(r.error) else ''}"


# ----------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    """Add `labkit sweep` to the CLI's subparsers (Ray is imported only when it runs)."""
    from .cli import int_in
    s = subparsers.add_parser("sweep", help="train a grid of configs x seeds on Ray Tune and write sweep.json")
    s.add_argument("--model", required=True, choices=MODEL_NAMES, help="the recipe the grid varies")
    s.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a TrainConfig field and its values, e.g. lr=1e-5,1e-4,1e-3; repeat for a product of fields")
    s.add_argument("--seeds", default="1", help="random seeds of each grid point, e.g. 1-3 or 1,5,9 (default 1)")
    s.add_argument("--epochs", type=int_in(1), help="default: the model's recipe (baseline: 50)")
    s.add_argument("--limit-train", type=int_in(1), help="train on the first N training images only")
    s.add_argument("--out", help="output folder (default outputs/sweeps/MODEL-TIMESTAMP); the same --out resumes")
    s.add_argument("--address", help="HOST:PORT of a running Ray cluster (default: a Ray instance on this machine)")
    s.add_argument("--cpus-per-trial", type=int_in(1),
                   help=f"CPUs and torch threads per trial (default {DEFAULT_CPUS_PER_TRIAL}, the fastest measured here)")
    s.add_argument("--gpus-per-trial", type=float,
                   help=f"GPUs per trial; fractions share a GPU (default {DEFAULT_GPUS_PER_TRIAL} where the cluster has GPUs)")
    s.add_argument("--max-failures", type=int_in(0), default=2, help="retries of a failed trial (default 2)")
    s.add_argument("--device", choices=DEVICES, help="default auto: the trial's GPU when it has one")
    s.add_argument("--precision", choices=PRECISIONS, help="default: the recipe's")
    s.add_argument("--no-resume", action="store_true", help="retrain trials already finished in --out")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    """`labkit sweep`: 0 when every trial finished, 1 when some failed, 2 for bad arguments, 130 when stopped."""
    from .data import DataError

    try:
        sweep = run(args.model, args.grid, args.seeds, epochs=args.epochs, limit_train=args.limit_train,
                    out_dir=args.out, address=args.address, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
                    resume=not args.no_resume, device=args.device, precision=args.precision)
    except (SweepError, DataError) as e:
        print(f"labkit sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"labkit sweep: {e or 'interrupted; finished trials stay on disk, the same command resumes'}",
              file=sys.stderr)
        return 130
    if sweep["failed"]:
        print(f"labkit sweep: {len(sweep['failed'])} trial(s) failed after {args.max_failures} retries: "
              f"{', '.join(sweep['failed'])}", file=sys.stderr)
        return 1
    return 0
