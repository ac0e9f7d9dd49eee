"""`labkit sweep`: a grid of trials (labkit.grid), each one ordinary training run in its own run folder, on Ray Tune.

Ray Tune schedules the trials (resources per trial, retries of failed trials, result tables); each
trial calls `train_runs` exactly as `labkit train` does, into OUT/trials/NAME, so it has the same
metrics.json, checkpoint and provenance. Ray is imported only when trials run.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import OUTPUTS_DIR, ConfigError, TrainConfig
from .recipes import recipe
from .grid import (DEFAULT_CPUS_PER_TRIAL, FINAL_KEYS, SweepError, fmt_value, format_points, grid_points, parse_grid,
                   parse_seeds, plan)
from .records import atomic_write, save_json
from .runfolder import RunFolder, RunFolderError, fresh_dir

SWEEP_JSON, SWEEP_CSV = "sweep.json", "sweep.csv"


@dataclass(frozen=True)
class Settings:
    """How the trials run: where (address), with what (CPUs, GPUs per trial), retries, resume, Tune's verbosity."""

    address: str | None = None  # HOST:PORT of a Ray cluster; None: a Ray instance on this machine
    cpus_per_trial: int | None = None  # None: DEFAULT_CPUS_PER_TRIAL
    gpus_per_trial: float | None = None  # None: DEFAULT_GPUS_PER_TRIAL where the cluster has GPUs, else 0
    max_failures: int = 2  # retries of a failed trial
    resume: bool = True  # keep trials finished earlier
    verbose: int = 1  # Tune's live table
    trial_fn: object = None  # what a Ray worker runs per trial: fn(config, specs); None: run_trial


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped (Ctrl-C) with trials unfinished; finished ones are on disk."""


# ----------------------------------------------------------------------------- one trial (in a Ray worker)

def run_trial(config: dict, specs: dict) -> None:
    """One trial on a Ray worker: train_runs into the trial's folder, reporting each epoch to Tune."""
    import torch
    from ray import tune

    from .progress import Progress
    from .train import train_runs

    spec = specs[config["name"]]
    torch.set_num_threads(spec["threads"])
    cfg = TrainConfig(**spec["config"])
    out = Path(spec["dir"])

    class TuneProgress(Progress):
        """Epoch lines to the driver's log, each epoch's numbers to Tune (its result table)."""

        def epoch_done(self, row):
            super().epoch_done(row)
            tune.report({"epoch": row["epoch"], **{k: row[k] for k in FINAL_KEYS}, "seconds": row["seconds"]})

    metrics = train_runs(cfg, runs=1, out_dir=out, resume=spec["resume"], progress=TuneProgress(1, cfg.epochs, live=False))
    record = trial_record(spec["name"], metrics["config"], metrics["runs"][0], out, metrics.get("provenance"),
                          spec["point"])
    last = record["epochs"][-1]
    # The record travels back as a reported result: the driver needs no shared disk with the workers.
    tune.report({"epoch": last["epoch"], **{k: last[k] for k in FINAL_KEYS}, "record": json.dumps(record)})


def trial_record(name: str, config: dict, run: dict, trial_dir: Path, fallback_provenance=None, point=None) -> dict:
    """One trial as sweep.json lists it."""
    return {"name": name, "point": point, "config": {**config, "seed": run["seed"]}, "seed": run["seed"],
            "epochs": run["epochs"],
            "precision": run.get("precision"), "wall_seconds": run.get("wall_seconds"),
            "diverged": run.get("diverged"), "provenance": run.get("provenance") or fallback_provenance,
            "dir": str(trial_dir)}


# ----------------------------------------------------------------------------- what is finished

def _finished_record(trial: dict, earlier: dict) -> dict | None:
    """The trial's record if it finished before: from the last sweep.json when its folder agrees, else from the folder."""
    cfg = TrainConfig(**trial["config"])
    done = RunFolder(trial["dir"]).finished(cfg).get(trial["seed"])  # RunFolderError: another config there
    if done is None:
        return None
    rec = earlier.get(trial["name"])
    if rec and rec.get("epochs") == done["epochs"]:
        return {**rec, "point": trial["point"], "dir": trial["dir"]}  # the folder may have moved with its sweep
    return trial_record(trial["name"], cfg.to_dict(), done, Path(trial["dir"]), point=trial["point"])


def _write_outputs(out: Path, sweep: dict) -> None:
    """sweep.json and sweep.csv (one line per finished trial: grid values, seed, final metrics)."""
    save_json(out / SWEEP_JSON, sweep)
    grid = list(sweep["grid"])
    lines = [",".join([*grid, "seed", "epochs", *FINAL_KEYS, "wall_seconds", "diverged"])]
    for t in sweep["trials"]:
        f = t["epochs"][-1]
        lines.append(",".join([*(fmt_value((t.get("point") or t["config"])[k]) for k in grid), str(t["seed"]), str(len(t["epochs"])),
                               *(repr(f[k]) for k in FINAL_KEYS), repr(t.get("wall_seconds")),
                               str(bool(t.get("diverged"))).lower()]))
    atomic_write(out / SWEEP_CSV, lambda p: Path(p).write_text("\n".join(lines) + "\n"))


def load_sweep(out_dir) -> dict:
    """A sweep.json written by run()."""
    from .safeio import read_json

    return read_json(Path(out_dir) / SWEEP_JSON, what="a sweep.json")


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


def _check_home() -> None:
    """Ray's local instance keeps an auth token in ~/.ray: refuse early, in one line, when that cannot be written."""
    ray_dir = Path.home() / ".ray"
    try:
        ray_dir.mkdir(parents=True, exist_ok=True)
        probe = ray_dir / f".labkit-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SweepError(f"Ray needs a writable {ray_dir} ({e.strerror or e}); set HOME to a writable folder, "
                         "e.g. HOME=$PWD/outputs/home labkit sweep ...") from None


class _DropRestoreAdvice(logging.Filter):
    """Tune's 'Resume experiment with: Tuner.restore(...)' after Ctrl-C: labkit resumes by running the same command."""

    def filter(self, record):
        return "Tuner.restore" not in record.getMessage()


class _Sweep:
    """A sweep under way: its trials, what finished, retries and errors, and sweep.json kept current."""

    def __init__(self, out: Path, trials: list[dict], sweep: dict, done: dict, settings: Settings):
        self.out, self.trials, self.sweep, self.done, self.settings = out, trials, sweep, done, settings
        self.retried: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def save(self) -> None:
        self.sweep["trials"] = [self.done[t["name"]] for t in self.trials if t["name"] in self.done]  # plan order
        _write_outputs(self.out, self.sweep)

    def tune(self, pending: list[dict], cpt: int, gpt: float, device: str) -> None:
        """The pending trials as one Tune experiment: resources, retries, result tables."""
        from ray import tune

        state, max_failures = self, self.settings.max_failures
        # a trial holding no GPU share trains on the CPU: Ray hides no GPU from it, so "auto" would find one
        specs = {t["name"]: {**t, "config": {**t["config"], "device": device}, "threads": cpt,
                             "resume": self.settings.resume} for t in pending}

        class Collect(tune.Callback):
            """Takes each finished trial's record as Tune reports it, and keeps sweep.json current."""

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "record" in result:
                    rec = json.loads(result["record"])
                    state.done[rec["name"]] = {**rec, "retries": state.retried.get(rec["name"], 0)}
                    state.save()

            def on_trial_recover(self, iteration, trials, trial, **info):
                name = trial.config["name"]
                state.retried[name] = state.retried.get(name, 0) + 1
                print(f"trial {name} failed (failure {state.retried[name]} of at most {max_failures}); Tune retries it",
                      flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                state.errors[trial.config["name"]] = "failed after retries"

        # The trial's name is its only Tune parameter (short tables); its spec travels by with_parameters.
        trial_fn = self.settings.trial_fn or run_trial
        trainable = tune.with_resources(tune.with_parameters(trial_fn, specs=specs), {"cpu": cpt, "gpu": gpt})
        tuner = tune.Tuner(
            trainable,
            param_space={"name": tune.grid_search(list(specs))},
            tune_config=tune.TuneConfig(trial_name_creator=lambda t: t.config["name"],
                                        trial_dirname_creator=lambda t: t.config["name"],
                                        reuse_actors=True),  # the next trial skips the worker's start and imports
            run_config=tune.RunConfig(name="tune", storage_path=str(self.out / "ray"), verbose=self.settings.verbose,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      callbacks=[Collect()]),
        )
        quiet = _DropRestoreAdvice()
        logging.getLogger("ray.tune.tune").addFilter(quiet)
        try:
            for r in tuner.fit():
                if r.error is not None and r.config and r.config.get("name") not in self.done:
                    first = str(r.error).splitlines()[0] if str(r.error) else ""
                    self.errors[r.config["name"]] = f"{type(r.error).__name__}: {first}"
        finally:
            logging.getLogger("ray.tune.tune").removeFilter(quiet)

    def run_pending(self, pending: list[dict]) -> None:
        """Start (or join) Ray, size the trials to the cluster, and run them."""
        address = self.settings.address
        if address is None and not _ray_initialized():
            _check_home()
        with _ray_environment(address):
            ours = not _ray_initialized()  # else: the caller's own ray.init(), left running
            ray = _start_ray(address) if ours else sys.modules["ray"]
            try:
                cpt, gpt, device, cluster = _resources(ray, self.settings.cpus_per_trial, self.settings.gpus_per_trial,
                                                       pending[0]["config"]["device"])
                prov = self.sweep["provenance"]
                prov.update(ray=ray.__version__, address=address or "local instance (127.0.0.1)",
                            cluster_cpus=cluster["cpus"], cluster_gpus=cluster["gpus"], cpus_per_trial=cpt,
                            gpus_per_trial=gpt, trial_device=device, max_failures=self.settings.max_failures)
                at_once = int(cluster["cpus"] // cpt)
                if gpt:
                    at_once = min(at_once, int(cluster["gpus"] // gpt))
                print(f"ray {ray.__version__}, {prov['address']}: {cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs; "
                      f"per trial {cpt} CPU(s){f' and {gpt:g} GPU' if gpt else ''} on {device}: up to {at_once} trials "
                      "at once", flush=True)
                self.tune(pending, cpt, gpt, device)
            finally:
                self.save()
                if ours:
                    ray.shutdown()


def _resources(ray, cpus_per_trial, gpus_per_trial, device: str) -> tuple[int, float, str, dict]:
    """CPUs and GPUs per trial and the device trials train on, checked against the cluster; and what it has."""
    from .device import trial_resources

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    cpt = cpus_per_trial or DEFAULT_CPUS_PER_TRIAL
    try:
        gpt, trial_device = trial_resources(device, gpus, gpus_per_trial)
    except ValueError as e:
        raise SweepError(str(e)) from None
    if cpt > cpus or gpt > gpus:
        raise SweepError(f"a trial asks for {cpt} CPU(s) and {gpt:g} GPU(s), the Ray cluster has {cpus:g} and {gpus:g}")
    return cpt, gpt, trial_device, {"cpus": cpus, "gpus": gpus}


def _check_settings(cpus_per_trial, gpus_per_trial, max_failures) -> None:
    if cpus_per_trial is not None and (isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int)
                                       or cpus_per_trial < 1):
        raise SweepError(f"cpus_per_trial must be a whole number >= 1, not {cpus_per_trial!r}")
    if gpus_per_trial is not None and not (gpus_per_trial >= 0 and (gpus_per_trial <= 1 or float(gpus_per_trial).is_integer())):
        raise SweepError(f"gpus_per_trial must be a fraction in 0..1 or a whole number, not {gpus_per_trial!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise SweepError(f"max_failures must be a whole number >= 0, not {max_failures!r}")


def run(model: str = "baseline", grid=None, seeds="1", epochs: int | None = None, limit_train: int | None = None,
        out_dir=None, address: str | None = None, cpus_per_trial: int | None = None,
        gpus_per_trial: float | None = None, max_failures: int = 2, resume: bool = True,
        device: str | None = None, precision: str | None = None, verbose: int = 1, trial_fn=None,
        wait: bool = False, **overrides) -> dict:
    """Run the sweep; returns the sweep.json dict plus "failed" and "retried". A bad setting raises SweepError before anything starts.

    grid: {"lr": [1e-5, 1e-4]} or ["lr=1e-5,1e-4"]; seeds: "1-3", an int or a list. Each trial is
    `train_runs(config, 1, out_dir=OUT/trials/NAME)`, as `labkit train --out ... --seed S --lr ...` runs it.
    Trials finished earlier (in OUT/sweep.json or their own run folder) are not run again. OUT is locked
    while the sweep runs (`wait`: wait for another sweep there). Ctrl-C stops the sweep (SweepInterrupted)
    with the finished trials saved. trial_fn(config, specs): what a Ray worker runs per trial (run_trial).
    """
    try:
        base = recipe(model, epochs=epochs, limit_train=limit_train, device=device, precision=precision, **overrides)
    except (ConfigError, TypeError) as e:
        raise SweepError(f"bad settings: {e}") from None
    grid = parse_grid(grid or {}, base)
    _check_settings(cpus_per_trial, gpus_per_trial, max_failures)
    settings = Settings(address, cpus_per_trial, gpus_per_trial, max_failures, resume, verbose, trial_fn)
    base_config = {k: v for k, v in base.to_dict().items() if k not in grid and k != "seed"}
    return run_points(model, grid, grid_points(base, grid), seeds, out_dir, settings, base_config, wait)


def run_ladder(seeds="1-10", epochs: int | None = None, limit_train: int | None = None, out_dir=None,
               device: str | None = None, address: str | None = None, cpus_per_trial: int | None = None,
               gpus_per_trial: float | None = None, max_failures: int = 2, resume: bool = True, verbose: int = 1,
               wait: bool = False) -> dict:
    """The ablation ladder (recipes.LADDER) as one sweep: each rung a point, `seeds` each; as run() otherwise."""
    from .recipes import ladder

    try:
        rungs = ladder(epochs=epochs, limit_train=limit_train, device=device)
    except ConfigError as e:
        raise SweepError(f"bad settings: {e}") from None
    _check_settings(cpus_per_trial, gpus_per_trial, max_failures)
    settings = Settings(address, cpus_per_trial, gpus_per_trial, max_failures, resume, verbose)
    points = [({"rung": name}, cfg) for name, cfg in rungs.items()]
    first = next(iter(rungs.values()))
    return run_points("ladder", {"rung": list(rungs)}, points, seeds, out_dir, settings,
                      {"epochs": first.epochs, "limit_train": first.limit_train}, wait)


def run_frontier(seeds=None, only=None, limit_train: int | None = None, out_dir=None, device: str | None = None,
                 address: str | None = None, cpus_per_trial: int | None = None, gpus_per_trial: float | None = None,
                 max_failures: int = 2, resume: bool = True, verbose: int = 1, wait: bool = False) -> dict:
    """The frontier (recipes.FRONTIER) as one sweep: each recipe a point with its own seeds (or `seeds` for all),
    `only` some of them; as run() otherwise."""
    from .recipes import frontier

    try:
        points = frontier(limit_train=limit_train, device=device)
    except ConfigError as e:
        raise SweepError(f"bad settings: {e}") from None
    if only is not None:
        unknown = sorted(set(only) - {name for name, _, _ in points})
        if unknown:
            raise SweepError(f"no frontier point {', '.join(unknown)} (points: {', '.join(n for n, _, _ in points)})")
        points = [p for p in points if p[0] in only]
    _check_settings(cpus_per_trial, gpus_per_trial, max_failures)
    settings = Settings(address, cpus_per_trial, gpus_per_trial, max_failures, resume, verbose)
    own = {name: parse_seeds(s if seeds is None else seeds) for name, _, s in points}
    union = sorted(set().union(*own.values()))
    return run_points("frontier", {"recipe": [name for name, _, _ in points]},
                      [({"recipe": name}, cfg, own[name]) for name, cfg, _ in points], union, out_dir, settings,
                      {"limit_train": limit_train, "precision": points[0][1].precision}, wait)


def run_points(label: str, grid: dict, points: list, seeds, out_dir, settings: Settings, base_config: dict,
               wait: bool = False) -> dict:
    """Train `seeds` of each (point, config) as one sweep into out_dir (locked while it runs); a point given as
    (point, config, seeds) trains its own seeds."""
    seeds = parse_seeds(seeds)
    out = (Path(out_dir) if out_dir is not None else fresh_dir(label, OUTPUTS_DIR / "sweeps")).resolve()
    trials = plan(points, seeds)
    if settings.address is None and any(t["config"]["device"] == "cuda" for t in trials):
        from .device import DeviceError, resolve_device

        try:
            resolve_device("cuda")  # this machine is the cluster: it must have the GPU
        except DeviceError as e:
            raise SweepError(str(e)) from None
    if len({t["config"]["device"] for t in trials}) > 1:
        raise SweepError("the trials of one sweep train on one device")
    for t in trials:
        t["dir"] = str(out / "trials" / t["name"])
    folder = RunFolder(out)  # the sweep's own folder: its lock keeps a second sweep out
    try:
        folder.prepare(wait=wait)
    except RunFolderError as e:
        raise SweepError(str(e)) from None
    try:
        return _run_locked(label, grid, seeds, trials, out, settings, base_config)
    finally:
        folder.release()


def _run_locked(model: str, grid: dict, seeds: list[int], trials: list[dict], out: Path, settings: Settings,
                base_config: dict) -> dict:
    """The sweep, with OUT locked: what finished earlier, then the rest on Ray, then the table."""
    earlier = {}
    if settings.resume and (out / SWEEP_JSON).is_file():
        try:
            earlier = {t["name"]: t for t in load_sweep(out).get("trials", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            earlier = {}
    done, foreign = {}, {}
    for t in trials if settings.resume else []:
        try:
            rec = _finished_record(t, earlier)
        except RunFolderError as e:
            foreign[t["name"]] = str(e)
            continue
        if rec is not None:
            done[t["name"]] = rec
    if foreign:
        name, why = next(iter(foreign.items()))
        raise SweepError(f"{out / 'trials'} holds {len(foreign)} trial(s) of another config (e.g. {name}: {why}); "
                         "choose another --out, or retrain into it with --no-resume")
    pending = [t for t in trials if t["name"] not in done]

    from .records import provenance

    prov = provenance("cpu")
    prov.update(device="per trial (trials[].provenance)", device_name=None)
    sweep = {"model": model, "grid": grid, "seeds": seeds,
             "base_config": base_config,
             "provenance": prov, "trials_requested": len(trials), "trials": []}
    state = _Sweep(out, trials, sweep, done, settings)
    print(f"sweep of {model!r}: {len(trials)} trial(s) = {len({json.dumps(t['point'], sort_keys=True) for t in trials})} "
          f"grid point(s) x {len(seeds)} seed(s){' (or fewer)' if len(trials) % len(seeds) else ''}; {len(done)} finished earlier, {len(pending)} to run; writing {out / SWEEP_JSON}", flush=True)
    state.save()
    if pending:
        state.run_pending(pending)
    failed = [t["name"] for t in pending if t["name"] not in done and t["name"] in state.errors]
    missing = [t["name"] for t in pending if t["name"] not in done and t["name"] not in state.errors]
    sweep.update(failed=failed, retried=state.retried)
    print(format_points(sweep), flush=True)
    if missing:
        raise SweepInterrupted(f"sweep stopped with {len(missing)} trial(s) unfinished; the {len(done)} finished stay "
                               f"in {out}: run the same command again to complete the rest")
    return sweep


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
