"""A run folder's one owner: its layout and file names, the single-writer lock, and resume.

A run folder holds what `train_runs` writes for one config: metrics.json (every run's epochs),
epochs.csv, one checkpoint per seed, and a lock file. Nothing else in labkit spells these names or
parses metrics.json. Resume keeps a finished run only when its checkpoint is readable and of the
same config and setup; nothing that holds finished runs is ever replaced by fewer runs.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import warnings
from pathlib import Path

from .config import DATA_DIR, NOTEBOOKS_DIR, OUTPUTS_DIR, TrainConfig, differing_fields, display_path
from .records import MetricsError, load_metrics, save_json, write_csv

METRICS = "metrics.json"
EPOCHS_CSV = "epochs.csv"
LOCK = ".lock"
CHECKPOINT_PREFIX = "run-seed"
SHIPPED_DIR = DATA_DIR / "runs"  # shipped results: written by `labkit ship` only, never by training

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunFolderError(ValueError):
    """An output folder that cannot take these runs without losing or mixing others."""


class FolderBusy(RunFolderError):
    """Another process is writing the folder."""


def timestamp() -> str:
    """Local time as folder names carry it, e.g. 20261202-091500."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def fresh_dir(prefix: str, parent: Path = OUTPUTS_DIR) -> Path:
    """parent/PREFIX-TIMESTAMP-PID, a name no other process can pick (a second one in this process gets -2, -3, ...)."""
    base = parent / f"{prefix}-{timestamp()}-{os.getpid()}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def is_finished(run: dict, epochs: int) -> bool:
    """A run that trained all its epochs, or stopped because it diverged (retraining would diverge again)."""
    return bool(run.get("diverged")) or len(run.get("epochs", [])) == epochs


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _why(e: OSError) -> str:
    return {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EEXIST: "exists and is not a folder"}.get(e.errno, e.strerror or type(e).__name__)


def _setup_of(run: dict) -> tuple[str, str] | None:
    """(device type, precision) a run trained with, where its record says."""
    setup = run.get("setup") or {}
    device = setup.get("device_type") or (run.get("provenance") or {}).get("device", "").split(":")[0] or None
    precision = setup.get("precision") or run.get("precision")
    return (device, precision) if device and precision else None


class RunFolder:
    """The files of one config's runs in one folder: metrics.json, epochs.csv, run-seedN.pt, .lock."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunFolder({display_path(self.path)!r})"

    # -- layout

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def checkpoint(self, seed: int) -> Path:
        """The checkpoint file of one seed's run."""
        return self.path / f"{CHECKPOINT_PREFIX}{seed}.pt"

    def checkpoints(self) -> dict[int, Path]:
        """{seed: path} of the checkpoints present."""
        found = {}
        for p in self.path.glob(f"{CHECKPOINT_PREFIX}*.pt"):
            digits = p.stem[len(CHECKPOINT_PREFIX):]
            if digits.isdigit():
                found[int(digits)] = p
        return dict(sorted(found.items()))

    def has_metrics(self) -> bool:
        return self.metrics_path.exists()

    def metrics(self) -> dict:
        """metrics.json, checked (MetricsError otherwise)."""
        return load_metrics(self.metrics_path)

    def write(self, metrics: dict) -> None:
        """metrics.json and epochs.csv, each atomically."""
        save_json(self.metrics_path, metrics)
        write_csv(metrics, self.path / EPOCHS_CSV)

    def _aside(self, path: Path, why: str) -> Path:
        """Rename path to PATH.WHY-TIMESTAMP beside it (never over an existing file)."""
        aside = path.with_name(f"{path.name}.{why}-{timestamp()}")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.{why}-{timestamp()}-{n}")
        path.replace(aside)
        return aside

    # -- writing: checks and the lock

    def prepare(self, wait: bool = False) -> None:
        """Refuse a folder training must not write, create it, and take its lock (RunFolderError in one line)."""
        if _inside(self.path, SHIPPED_DIR):
            raise RunFolderError(f"{display_path(self.path)} is inside {display_path(SHIPPED_DIR)}, the shipped runs: "
                                 "train into outputs/ and ship with `labkit ship`")
        if _inside(self.path, NOTEBOOKS_DIR):
            raise RunFolderError(f"{display_path(self.path)} is inside notebooks/: choose a folder under outputs/")
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create {self.path}: {_why(e)}") from None
        self.lock(wait=wait)

    def lock(self, wait: bool = False) -> None:
        """Take the folder's advisory lock for this process (released by release() or at exit); FolderBusy if held."""
        if self._lock_fd is not None:
            return
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot write to {self.path}: {_why(e)}") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise FolderBusy(f"{display_path(self.path)} is being written by {holder}; wait for it to finish "
                             "(or pass --wait), or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} since {timestamp()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise RunFolderError(f"cannot write to {self.path}: {_why(e)}") from None
        self._lock_fd = fd

    def release(self) -> None:
        """Give the lock back."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    # -- resume

    def read_checkpoint_run(self, seed: int) -> dict | None:
        """The run a seed's checkpoint holds (its metrics, config, provenance), or None when it cannot be read."""
        from .checkpoint import CheckpointError, read

        try:
            ckpt = read(self.checkpoint(seed))
        except CheckpointError:
            return None
        metrics = ckpt.get("metrics")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
            return None
        return {**metrics, "config": ckpt.get("config", {}), "provenance": ckpt.get("provenance")}

    def finished(self, cfg: TrainConfig, setup: tuple[str, str] | None = None) -> dict[int, dict]:
        """{seed: run} of the runs of `cfg` finished here, each backed by a readable checkpoint of the same config.

        An unreadable metrics.json is kept aside and the runs rebuilt from the checkpoints; a damaged
        checkpoint is kept aside and its run retrained (each named in a warning); a metrics.json whose
        finished runs lost their checkpoints is kept aside before anything is retrained. Runs of another
        config, or of another device type or precision (`setup`), are refused with RunFolderError.
        """
        recorded: dict[int, dict] = {}
        unreadable = None  # (the error, where metrics.json was kept) when it could not be read
        if self.has_metrics():
            try:
                old = self.metrics()
            except MetricsError as e:
                unreadable = (e, self._aside(self.metrics_path, "unreadable"))
            else:
                differ = differing_fields(old["config"], cfg.to_dict())
                if differ:
                    raise RunFolderError(f"{display_path(self.path)} holds runs of another config (differs in "
                                         f"{', '.join(differ)}); choose another output folder")
                recorded = {r["seed"]: {**r, "provenance": r.get("provenance") or old.get("provenance")}
                            for r in old["runs"] if is_finished(r, cfg.epochs)}
        done: dict[int, dict] = {}
        lost: list[int] = []
        for seed in sorted(set(recorded) | set(self.checkpoints())):
            if not self.checkpoint(seed).exists():
                lost.append(seed)
                continue
            run = self.read_checkpoint_run(seed)
            if run is None:
                aside = self._aside(self.checkpoint(seed), "damaged")
                warnings.warn(f"{display_path(self.path)}: the checkpoint of seed {seed} cannot be read; kept it as "
                              f"{aside.name} and will train that run again", RuntimeWarning, stacklevel=3)
                continue
            differ = differing_fields(run.pop("config"), cfg.to_dict())
            if run.get("seed") != seed:
                differ.append("seed")
            if differ:
                raise RunFolderError(f"{display_path(self.checkpoint(seed))} is a run of another config (differs in "
                                     f"{', '.join(differ)}); choose another output folder")
            if seed in recorded and recorded[seed]["epochs"] != run["epochs"]:
                aside = self._aside(self.checkpoint(seed), "mismatch")
                warnings.warn(f"{display_path(self.path)}: the checkpoint of seed {seed} is not the run metrics.json "
                              f"records; kept it as {aside.name} and will train that run again", RuntimeWarning,
                              stacklevel=3)
                continue
            if is_finished(run, cfg.epochs):
                done[seed] = recorded.get(seed, run)
        if unreadable is not None:
            warnings.warn(f"{unreadable[0]}; kept it as {unreadable[1].name} and rebuilt {len(done)} finished run(s) "
                          "from their checkpoints", RuntimeWarning, stacklevel=3)
        if lost:
            kept = shutil.copy2(self.metrics_path, self.metrics_path.with_name(f"{METRICS}.kept-{timestamp()}"))
            warnings.warn(f"{display_path(self.path)}: metrics.json records finished run(s) of seed(s) "
                          f"{', '.join(map(str, lost))} without a checkpoint; kept a copy as {Path(kept).name} before "
                          "training them again", RuntimeWarning, stacklevel=3)
        if setup is not None:
            for seed, run in done.items():
                theirs = _setup_of(run)
                if theirs is not None and theirs != tuple(setup):
                    raise RunFolderError(f"{display_path(self.path)} holds seed {seed} trained on {theirs[0]} in "
                                         f"{theirs[1]}, and this run trains on {setup[0]} in {setup[1]}: one table "
                                         "must not mix them; choose another output folder")
        return done

    def holds_runs(self) -> bool:
        """Whether the folder holds any metrics.json or checkpoint."""
        return self.has_metrics() or bool(self.checkpoints())

    def move_aside(self) -> Path:
        """Move metrics.json, epochs.csv and the checkpoints into a fresh subfolder `replaced-TIMESTAMP/`."""
        dest = fresh_dir("replaced", self.path)
        dest.mkdir()
        for p in [self.metrics_path, self.path / EPOCHS_CSV, *self.checkpoints().values()]:
            if p.exists():
                p.replace(dest / p.name)
        return dest

    def start_over(self, cfg: TrainConfig, move_aside: bool = False) -> Path | None:
        """Before training without resume: earlier runs move to replaced-TIMESTAMP/ (returned); those of another
        config only with `move_aside` (else RunFolderError), so no finished run is ever overwritten."""
        if not self.holds_runs():
            return None
        if not move_aside:
            try:
                other = differing_fields(self.metrics()["config"], cfg.to_dict()) if self.has_metrics() else []
            except MetricsError:
                other = ["(unreadable metrics.json)"]
            if other:
                raise RunFolderError(f"{display_path(self.path)} holds runs of another config (differs in "
                                     f"{', '.join(other)}); choose another output folder, or move them aside "
                                     "(--move-aside)")
        return self.move_aside()


def runs_dir(cfg: TrainConfig) -> Path:
    """outputs/runs/<protocol>: where a config's runs live on this machine, so reruns resume (see protocol_name)."""
    from .device import setup_run

    setup = setup_run(cfg)
    return OUTPUTS_DIR / "runs" / protocol_name(cfg, setup.device.type, setup.precision)


def protocol_name(cfg: TrainConfig, device_type: str, precision: str) -> str:
    """<model>-e<epochs>[-n<train images>]-<precision>[-<device>], e.g. improved-e5-fp32 (as shipped in data/runs)."""
    limit = "" if cfg.limit_train is None else f"-n{cfg.limit_train}"
    device = "" if device_type == "cpu" else f"-{device_type}"
    return f"{cfg.model}-e{cfg.epochs}{limit}-{precision}{device}"
