"""Sweep grids: TrainConfig fields x seeds parsed and checked, the trials they make, their default
resources and their summaries (pure, no Ray)."""
from __future__ import annotations

import itertools
import math
import types
import typing

from .config import ConfigError, TrainConfig
from .stats import accuracy_stats

FINAL_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")
# Threads per trial: on a 2-core machine shared with other work, two 1-thread trials side by side
# beat one 2-thread trial at a time: 4 baseline trials x 2 epochs x 60,000 images took 38-52 s
# against 179-207 s, 4 improved trials x 1 epoch x 6,000 images 44 s against 102 s (2-thread
# OpenMP kernels stall whenever another process takes one of the two cores).
DEFAULT_CPUS_PER_TRIAL = 1
DEFAULT_GPUS_PER_TRIAL = 0.25  # where the cluster has GPUs: four small trials share one
MAX_SEEDS = 10_000  # seeds in one sweep (the README's cluster study uses 1,500)
_NOT_IN_GRID = {"seed": "give seeds with --seeds (e.g. --seeds 1-3)",
                "model": "give the model with --model (each model has its own recipe)",
                "device": "give the device with --device (the trials of a sweep share one)"}


class SweepError(ValueError):
    """A bad grid, seed list or sweep setting: reported before any trial starts."""


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
    """"1-3" -> [1, 2, 3]; "1,4,7-8" -> [1, 4, 7, 8]; an int or a list of ints passes through; at most MAX_SEEDS."""
    too_many = f"bad seeds {spec!r}: more than {MAX_SEEDS:,} seeds in one sweep"
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
            if len(seeds) + (b - a + 1) > MAX_SEEDS:  # checked before the range is made
                raise SweepError(too_many)
            seeds.extend(range(a, b + 1))
    else:
        seeds = list(spec)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise SweepError(f"bad seeds {spec!r}: not whole numbers")
    if not seeds:
        raise SweepError(f"bad seeds {spec!r}: no seed given")
    if len(seeds) > MAX_SEEDS:
        raise SweepError(too_many)
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"bad seeds {spec!r}: a seed is listed twice")
    for s in (min(seeds), max(seeds)):
        try:
            TrainConfig(seed=s)  # TrainConfig says which seeds a run can take
        except ConfigError as e:
            raise SweepError(f"bad seeds {spec!r}: {e}") from None
    if min(seeds) < 0:
        raise SweepError(f"bad seeds {spec!r}: seeds must be >= 0")
    return seeds


def fmt_value(v) -> str:
    """A grid value as names and tables print it: strings bare, numbers as repr."""
    return v if isinstance(v, str) else repr(v)


def trial_name(point: dict, seed: int) -> str:
    """Folder (and Tune trial) name of a trial: its grid values and seed, e.g. 'lr=0.0001,seed=2'."""
    return ",".join([*(f"{k}={fmt_value(v)}" for k, v in point.items()), f"seed={seed}"])


def grid_points(base: TrainConfig, grid: dict[str, list]) -> list[tuple[dict, TrainConfig]]:
    """(point, config) of each grid point, in the order given (the last field varying fastest)."""
    return [(point, base.replace(**point)) for point in (dict(zip(grid, v)) for v in itertools.product(*grid.values()))]


def plan(points: list[tuple], seeds: list[int]) -> list[dict]:
    """Every trial of the sweep: its points (a grid's, or named configs such as the ladder's rungs), seeds innermost;
    a point given as (point, config, its own seeds) takes those instead of `seeds`."""
    trials = []
    for point, cfg, *own in points:
        for seed in (own[0] if own else seeds):
            trials.append({"name": trial_name(point, seed), "point": point, "seed": seed,
                           "config": cfg.replace(seed=seed).to_dict()})
    return trials


def final_row(trial: dict) -> dict | None:
    """A trial's last epoch, or None when it diverged (its numbers are not finite)."""
    return None if trial.get("diverged") else trial["epochs"][-1]


def point_rows(sweep: dict) -> list[dict]:
    """One row per grid point: its values, n (seeds finished, not diverged), diverged, and mean and std (n-1)
    over seeds of each final metric."""
    grid = sweep["grid"]
    groups: dict[tuple, list[dict]] = {}
    for t in sweep["trials"]:
        where = t.get("point") or t["config"]  # a ladder's point is a rung's name, not a config field
        groups.setdefault(tuple(where[k] for k in grid), []).append(t)
    rows = []
    for values in itertools.product(*grid.values()):
        trials = groups.get(tuple(values), [])
        finals = [f for t in trials if (f := final_row(t)) is not None]
        row = {**dict(zip(grid, values)), "n": len(finals), "diverged": len(trials) - len(finals)}
        for k in FINAL_KEYS:
            st = accuracy_stats([f[k] for f in finals]) if finals else {"mean": math.nan, "std": math.nan}
            row[k + "_mean"], row[k + "_std"] = st["mean"], st["std"]
        rows.append(row)
    return rows


def format_points(sweep: dict) -> str:
    """The printed table: per grid point, mean ± std (n-1) over seeds of train and test accuracy."""
    grid = list(sweep["grid"])
    heads = [*grid, "seeds", "diverged", "train acc (mean ± std)", "test acc (mean ± std)", "test loss (mean)"]
    body = []
    for r in point_rows(sweep):
        pm = lambda k: f"{r[k + '_mean']:.4f} ± {r[k + '_std']:.4f}" if r["n"] else "-"
        body.append([*(fmt_value(r[k]) for k in grid), str(r["n"]), str(r["diverged"]), pm("train_acc"),
                     pm("test_acc"), f"{r['test_loss_mean']:.4f}" if r["n"] else "-"])
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(heads), *(line(b) for b in body)])


def trials_of(sweep: dict, field: str, value) -> list[dict]:
    """The trials of one point (e.g. a ladder's rung: field "rung"), in seed order."""
    return sorted((t for t in sweep["trials"] if (t.get("point") or t["config"])[field] == value),
                  key=lambda t: t["seed"])


def compare_points(sweep: dict, probs, y, field: str, a, b) -> dict:
    """Point b against point a on the seeds both finished: the paired t of their final test accuracies over
    seeds, and McNemar's exact test on their ensembles' predictions (mean probabilities of those seeds)."""
    import numpy as np

    from .stats import mcnemar_exact, paired_runs

    index = {t["name"]: i for i, t in enumerate(sweep["trials"])}
    ta = {t["seed"]: t for t in trials_of(sweep, field, a) if not t.get("diverged")}
    tb = {t["seed"]: t for t in trials_of(sweep, field, b) if not t.get("diverged")}
    seeds = sorted(ta.keys() & tb.keys())
    if len(seeds) < 2:
        raise SweepError(f"{a} and {b} share fewer than 2 finished seeds")
    acc = lambda ts: [ts[s]["epochs"][-1]["test_acc"] for s in seeds]
    ens = lambda ts: np.asarray(probs)[[index[ts[s]["name"]] for s in seeds]].mean(0).argmax(-1)
    y = np.asarray(y)
    return {"a": a, "b": b, "seeds": seeds, "runs": paired_runs(acc(ta), acc(tb)),
            "mcnemar_ensemble": mcnemar_exact(ens(ta) == y, ens(tb) == y)}


def first_at_or_above(trials: list[dict], threshold: float) -> tuple[int, float] | None:
    """(epoch, training seconds) at which the mean test accuracy over `trials` (the same recipe, every seed)
    first reaches `threshold`: the first epoch whose mean is at or above it, and the mean over seeds of the
    training seconds up to the end of that epoch; None when no epoch reaches it."""
    import numpy as np

    epochs = min(len(t["epochs"]) for t in trials)
    acc = np.array([[e["test_acc"] for e in t["epochs"][:epochs]] for t in trials]).mean(0)  # (epochs,)
    secs = np.array([np.cumsum([e["seconds"] for e in t["epochs"][:epochs]]) for t in trials]).mean(0)
    hit = np.nonzero(acc >= threshold)[0]
    return (int(hit[0]) + 1, float(secs[hit[0]])) if len(hit) else None


def frontier_rows(sweep: dict, field: str = "recipe", thresholds=(0.99, 0.995)) -> list[dict]:
    """One row per point of a frontier sweep: its config, parameters, runs, training and wall seconds per run
    (means over runs), final test accuracy (mean, std, 95 % t interval) and, per threshold, the first epoch at
    or above it with the training seconds to get there (first_at_or_above)."""
    import numpy as np

    from .models import build_model, count_parameters
    from .stats import mean_interval

    rows = []
    for point in sweep["grid"][field]:
        every = trials_of(sweep, field, point)
        trials = [t for t in every if not t.get("diverged")]
        if not trials:
            rows.append({"point": point, "runs": 0, "diverged": len(every)})
            continue
        accs = np.array([t["epochs"][-1]["test_acc"] for t in trials])
        cfg = trials[0]["config"]
        row = {"point": point, "model": cfg["model"], "epochs": cfg["epochs"], "runs": len(trials),
               "diverged": len(every) - len(trials),
               "precision": sorted({t.get("precision") or cfg["precision"] for t in trials}),
               "parameters": count_parameters(build_model(cfg["model"])),
               "train_seconds": float(np.mean([sum(e["seconds"] for e in t["epochs"]) for t in trials])),
               "wall_seconds": float(np.mean([t["wall_seconds"] for t in trials])),
               "test_acc": accs.tolist(), "mean": float(accs.mean()),
               "std": float(accs.std(ddof=1)) if len(accs) > 1 else math.nan,
               "ci95": mean_interval(accs) if len(accs) > 1 else (math.nan, math.nan)}
        for th in thresholds:
            row[f"to_{th}"] = first_at_or_above(trials, th)
        rows.append(row)
    return rows
