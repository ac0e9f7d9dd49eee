"""The one training path: the epoch loop of a run, and the runs loop that writes metrics.json."""
from __future__ import annotations

import datetime as _dt
import math
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .config import OUTPUTS_DIR, RECIPES, TrainConfig, differing_fields
from .data import mnist_tensors, to_input
from .device import resolve_device, resolve_precision
from .models import build_model
from .records import MetricsError, finite_json, load_metrics, provenance, save_json, write_csv

_TINY = torch.finfo(torch.float32).tiny  # smallest normal fp32


class TrainingStopped(Exception):
    """Training was asked to stop (Stop button, Ctrl-C); finished epochs are on disk."""


class RunsFolderError(ValueError):
    """An output folder that cannot take these runs without losing others."""


def augment(x: torch.Tensor, gen: torch.Generator, background: float = 0.0,
            degrees=10.0, scale=0.1, shift=2.0) -> torch.Tensor:
    """Random rotation, scaling and shift of each digit (bilinear); uncovered pixels get `background`."""
    b = x.shape[0]
    r = lambda: torch.rand(b, generator=gen, device=gen.device) * 2 - 1  # uniform in [-1, 1]
    angle = r() * math.radians(degrees)
    s = 1 + r() * scale
    tx, ty = r() * shift * 2 / 28, r() * shift * 2 / 28
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


@torch.no_grad()
def evaluate(model, x_uint8, y, cfg: TrainConfig) -> dict:
    """Loss and accuracy over all of (x, y), plus the per-sample losses and predictions."""
    model.eval()
    losses, preds = [], []
    for i in range(0, len(x_uint8), cfg.eval_batch):
        logits = model(to_input(x_uint8[i:i + cfg.eval_batch], cfg.normalize))
        losses.append(F.cross_entropy(logits, y[i:i + cfg.eval_batch], reduction="none"))
        preds.append(logits.argmax(1))
    loss, pred = torch.cat(losses), torch.cat(preds)
    return {"loss": loss.mean().item(), "acc": (pred == y).float().mean().item(), "losses": loss, "pred": pred}


def report_test_counting(ev: dict, y: torch.Tensor) -> dict:
    """What the report's test loop printed: batches of 64, first 11 samples each, last batch's loss."""
    idx = torch.arange(len(y), device=y.device)
    counted = (idx % 64) < 11  # its `if i > outputs.shape[1]: break` stops after i = 10
    last = len(y) - (len(y) % 64 or 64)
    return {"test_acc": (ev["pred"] == y)[counted].float().mean().item(),
            "test_loss": ev["losses"][last:].mean().item()}


def _sgd(model, cfg: TrainConfig) -> torch.optim.SGD:
    """The recipe's SGD; the fused implementation (one kernel for all parameters) where torch has it."""
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.SGD(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without fused SGD
        return torch.optim.SGD(model.parameters(), **kw)


def _flush_subnormal(grad: torch.Tensor) -> torch.Tensor:
    return grad.masked_fill(grad.abs() < _TINY, 0.0)


def train_run(cfg: TrainConfig, data: dict | None = None, checkpoint: Path | None = None,
              on_epoch=None, progress=None, stop: threading.Event | None = None) -> dict:
    """Train one run of `cfg`; returns {seed, epochs: [...], ...}. Numbers depend only on cfg.

    With `stop` set (from another thread), training ends after the current step by raising
    TrainingStopped; the epochs finished before it are already in `checkpoint` and on_epoch's files.
    """
    # Subnormal floats make CPU matrix multiplies ~100x slower. The report's recipe (raw 0-255
    # pixels) saturates its softmax, so its logit gradients fill with subnormals. Flush-to-zero
    # covers threads started after this; the logits hook below covers the rest.
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    data = data if data is not None else mnist_tensors(cfg.limit_train, device)
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    n = len(x_train)
    torch.manual_seed(cfg.seed)  # as the report: seeds initialisation and the shuffle
    model = build_model(cfg.model).to(device)
    precision = resolve_precision(cfg.precision, device, cfg.model)
    amp = precision == "bf16"
    # oneDNN's convolutions want NHWC on CPU: in bf16 ~3x faster than fp32 NCHW on an AMX CPU; the
    # improved model's max-pool and BatchNorm are faster in NHWC in fp32 too (benchmarks/NOTES.md)
    channels_last = device.type == "cpu" and (amp or getattr(model, "channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _sgd(model, cfg)
    steps = math.ceil(n / cfg.batch_size)
    sched = None
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps
        peak = cfg.lr * min(1.0, total / cfg.min_peak_steps)  # short runs (cheap notebook defaults) need a lower peak
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total,
                                                    pct_start=0.25, div_factor=10, final_div_factor=100)
    elif cfg.schedule != "constant":
        raise ValueError(f"schedule must be 'constant' or 'onecycle', not {cfg.schedule!r}")
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003) if cfg.augment else None
    background = to_input(torch.zeros((), dtype=torch.uint8), cfg.normalize).item()  # a 0 pixel as the model sees it
    result = {"seed": cfg.seed, "precision": precision, "provenance": provenance(device), "epochs": [], "wall_seconds": 0.0}
    first11 = torch.arange(n, device=device) % cfg.batch_size < 11  # the report's `if i > outputs.shape[1]: break`
    sizes = torch.full((steps,), float(cfg.batch_size), device=device)  # samples per batch
    sizes[-1] = n - (steps - 1) * cfg.batch_size
    t_run = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        # The shuffle exactly as the report's DataLoader(shuffle=True) draws it, so seed 1 replays
        # its batch order: the iterator's base seed, then the sampler's seed for a fresh randperm.
        torch.empty((), dtype=torch.int64).random_()
        shuffle_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).to(device)
        model.train()
        batch_loss = torch.empty(steps, device=device)  # mean loss of each batch
        pred = torch.empty(n, dtype=torch.long, device=device)  # prediction for each sample, in epoch order
        t0 = time.perf_counter()
        x_epoch, y_epoch = x_train.index_select(0, perm), y_train.index_select(0, perm)  # one gather per epoch; batches are then slices
        for b in range(steps):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            x = to_input(x_epoch[batch], cfg.normalize)  # (B, 1, 28, 28)
            y = y_epoch[batch]
            if aug_gen is not None:
                x = augment(x, aug_gen, background)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)  # (B, 10)
            if logits.requires_grad and device.type == "cpu":
                logits.register_hook(_flush_subnormal)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():  # stays on the device: no host sync per step
                batch_loss[b] = loss.detach()
                torch.argmax(logits, 1, out=pred[batch])
            if progress is not None:
                progress.batch(epoch, b + 1, steps)
            if stop is not None and stop.is_set():
                raise TrainingStopped(f"stopped in epoch {epoch} of seed {cfg.seed}; {epoch - 1} finished epoch(s) kept")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        hit = pred == y_epoch
        ev = evaluate(model, x_test, y_test, cfg)
        rep = report_test_counting(ev, y_test)
        row = {
            "epoch": epoch,
            "train_loss": (batch_loss * sizes).sum().item() / n,
            "train_acc": hit.sum().item() / n,
            "test_loss": ev["loss"],
            "test_acc": ev["acc"],
            "seconds": round(seconds, 4),
            "report_counting": {  # what the report's code would have printed for this epoch
                "train_acc": hit[first11].sum().item() / first11.sum().item(),
                "train_loss": batch_loss.sum().item() / 128,  # its running_loss / BATCH_SIZE
                **rep,
            },
        }
        not_finite = ~torch.isfinite(batch_loss)
        bad_batch = bool(not_finite.any())  # one check per epoch, beside the .item() calls above
        diverged = bad_batch or not math.isfinite(ev["loss"])  # or the epoch's last step made the weights so
        if diverged:  # a NaN or infinite loss never recovers: record where, keep the numbers JSON can hold
            step = int(not_finite.nonzero()[0, 0]) + 1 if bad_batch else steps
            row = finite_json(row)
            result["diverged"] = {"epoch": epoch, "step": step}
        result["epochs"].append(row)
        result["wall_seconds"] = round(time.perf_counter() - t_run, 3)  # training + evaluation so far
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, cfg, result)
        if on_epoch is not None:
            on_epoch(result, row)
        if progress is not None:
            progress.epoch_done(row)
        if diverged:
            warnings.warn(f"seed {cfg.seed} diverged at epoch {epoch}, step {step} (loss not finite); "
                          "lower the learning rate", RuntimeWarning, stacklevel=2)
            break
    result["final_model"] = model
    return result


def runs_dir(cfg: TrainConfig) -> Path:
    """outputs/runs/<model>-e<epochs>-<n train>[-<precision>]: where a config's runs live, so reruns can resume."""
    precision = "" if cfg.precision == RECIPES[cfg.model].get("precision", "fp32") else f"-{cfg.precision}"
    return OUTPUTS_DIR / "runs" / f"{cfg.model}-e{cfg.epochs}-{'all' if cfg.limit_train is None else cfg.limit_train}{precision}"


def _checkpoint_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"run-seed{seed}.pt"


def _finished_from_checkpoints(out_dir: Path, cfg: TrainConfig) -> dict[int, dict]:
    """Runs of `cfg` that finished, rebuilt from the checkpoints in out_dir (each holds its run's metrics)."""
    done = {}
    for path in sorted(out_dir.glob("run-seed*.pt")):
        try:  # the dict only: the weights are not needed to read a run's metrics
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged checkpoint is one run to retrain, not a reason to stop
            continue
        run = {**ckpt.get("metrics", {}), "provenance": ckpt.get("provenance")}
        if differing_fields(ckpt.get("config", {}), cfg.to_dict()):
            raise RunsFolderError(f"{out_dir} holds a checkpoint of another config ({path.name}); choose another "
                                  "output folder, or retrain into it without resuming")
        if isinstance(run.get("seed"), int) and len(run.get("epochs", [])) == cfg.epochs:
            done[run["seed"]] = run
    return done


def _previous_runs(out_dir: Path, cfg: TrainConfig) -> dict[int, dict]:
    """Finished runs of `cfg` in out_dir; an unreadable metrics.json is moved aside and rebuilt from checkpoints."""
    path = out_dir / "metrics.json"
    try:
        old = load_metrics(path)
    except MetricsError as e:
        aside = path.with_name(f"metrics.json.unreadable-{_dt.datetime.now():%Y%m%d-%H%M%S}")
        path.replace(aside)
        done = _finished_from_checkpoints(out_dir, cfg)
        warnings.warn(f"{e}; kept it as {aside.name} and rebuilt {len(done)} finished run(s) from their checkpoints",
                      RuntimeWarning, stacklevel=3)
        return done
    differ = differing_fields(old["config"], cfg.to_dict())
    if differ:
        raise RunsFolderError(f"{out_dir} holds runs of another config (differs in {', '.join(differ)}); "
                              "choose another output folder, or retrain into it without resuming")
    return {r["seed"]: {**r, "provenance": r.get("provenance", old.get("provenance"))}  # each run keeps its own
            for r in old["runs"] if len(r["epochs"]) == cfg.epochs and _checkpoint_path(out_dir, r["seed"]).exists()}


def check_out_dir(out_dir) -> Path:
    """out_dir as a Path, refused when it names something that is not a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunsFolderError(f"{out_dir} exists and is not a folder")
    return out_dir


def train_runs(cfg: TrainConfig, runs: int = 1, out_dir=None, resume: bool = True, progress=None,
               keep_models: bool = False, stop: threading.Event | None = None) -> dict:
    """Train runs with seeds cfg.seed, cfg.seed+1, ...; metrics.json and epochs.csv are rewritten after every epoch.

    With `resume`, runs already finished in out_dir under the same config are kept instead of
    retrained (from metrics.json, or from the run checkpoints when metrics.json is unreadable); a run
    cut off halfway is trained again from its start. A folder holding another config's runs is refused.
    """
    from .progress import Progress

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a whole number >= 1, not {runs!r}")
    device = resolve_device(cfg.device)
    out_dir = check_out_dir(out_dir) if out_dir is not None else None
    done: dict[int, dict] = {}
    if out_dir is not None and resume and (out_dir / "metrics.json").exists():
        done = _previous_runs(out_dir, cfg)
    data = mnist_tensors(cfg.limit_train, device)
    metrics = {"config": cfg.to_dict(), "runs_requested": runs, "provenance": provenance(device), "runs": []}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    def save():
        if out_dir is not None:
            save_json(out_dir / "metrics.json", metrics)
            write_csv(metrics, out_dir / "epochs.csv")

    progress = progress if progress is not None else Progress(runs, cfg.epochs)
    models = []
    for i in range(runs):
        seed = cfg.seed + i
        if seed in done:
            metrics["runs"].append(done[seed])
            then = (done[seed].get("provenance") or {}).get("git_commit", "unknown")
            note = "" if then == metrics["provenance"]["git_commit"] else f" (trained at commit {then[:12]}, code now at {metrics['provenance']['git_commit'][:12]})"
            print(f"run {i + 1}/{runs} (seed {seed}): finished earlier, loaded from {out_dir.name}{note}")
            if keep_models:
                models.append(load_checkpoint(_checkpoint_path(out_dir, seed), device)[0])
            continue
        metrics["runs"].append({"seed": seed, "epochs": []})

        def on_epoch(result, row, _slot=len(metrics["runs"]) - 1):
            metrics["runs"][_slot] = {k: v for k, v in result.items() if k != "final_model"}
            save()

        progress.start_run(i, seed)
        ckpt = _checkpoint_path(out_dir, seed) if out_dir is not None else None
        result = train_run(cfg.replace(seed=seed), data=data, checkpoint=ckpt, on_epoch=on_epoch, progress=progress,
                           stop=stop)
        if keep_models:
            models.append(result["final_model"])
    save()  # also when every run was loaded: a rebuilt metrics.json is written back
    if keep_models:
        metrics["models"] = models
    return metrics
