"""The one training path: the epoch loop of a run, and the runs loop that writes metrics.json."""
from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .config import AUGMENT_SEED_OFFSET, TrainConfig, display_path, holdout_split
from .data import mnist_tensors, to_input
from .device import apply, setup_run
from .models import build_model
from .records import finite_json, provenance
from .runfolder import RunFolder

_TINY = torch.finfo(torch.float32).tiny  # smallest normal fp32


class TrainingStopped(Exception):
    """Training was asked to stop (Stop button, Ctrl-C); finished epochs are on disk."""


def augment(x: torch.Tensor, gen: torch.Generator, background: float = 0.0,
            degrees=10.0, scale=0.1, shift=2.0) -> torch.Tensor:
    """Random rotation, scaling and shift of each digit (bilinear); uncovered pixels get `background`."""
    u = torch.rand(4, x.shape[0], generator=gen, device=gen.device)
    return jitter(x, u.to(x.device), background, degrees, scale, shift)


def jitter(x: torch.Tensor, u: torch.Tensor, background: float = 0.0,
           degrees=10.0, scale=0.1, shift=2.0) -> torch.Tensor:
    """augment() with its random numbers given: u (4, B) uniform in [0, 1) for angle, scale, x shift, y shift."""
    angle, s, tx, ty = u * 2 - 1  # each uniform in [-1, 1]
    angle = angle * math.radians(degrees)
    s = 1 + s * scale
    tx, ty = tx * shift * 2 / 28, ty * shift * 2 / 28
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


def _optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD, Adadelta (rho = cfg.momentum) or Adam (beta1 = cfg.momentum, beta2 0.999),
    with torch's other defaults; SGD and Adam fused (one kernel for all parameters) where torch has it."""
    if cfg.optimizer == "adadelta":  # torch has no fused Adadelta
        return torch.optim.Adadelta(model.parameters(), lr=cfg.lr, rho=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        make, kw = torch.optim.Adam, dict(lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    else:
        make, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                         weight_decay=cfg.weight_decay)
    if device.type not in ("cpu", "cuda"):  # torch refuses fused optimisers elsewhere, and only at the first step
        return make(model.parameters(), **kw)
    try:
        return make(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return make(model.parameters(), **kw)


def _flush_subnormal(grad: torch.Tensor) -> torch.Tensor:
    return grad.masked_fill(grad.abs() < _TINY, 0.0)


def one_cycle(opt, peak: float, total: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule over `total` steps: a quarter warming up from peak/10, then annealing to peak/1000.

    Under five steps the warm-up would span one step or less (exactly one makes torch divide by zero), so
    the cycle is then its annealing half alone.
    """
    pct_start = 0.25 if total * 0.25 > 1 else 0.0
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=pct_start,
                                               div_factor=10, final_div_factor=100)


def train_run(cfg: TrainConfig, data: dict | None = None, checkpoint: Path | None = None,
              on_epoch=None, progress=None, stop: threading.Event | None = None) -> dict:
    """Train one run of `cfg`; returns {seed, precision, setup, epochs: [...], ...}. Numbers depend only on cfg
    and the device type: a GPU repeats its own numbers (setup_run's determinism), not the CPU's.

    With `stop` set (from another thread), training ends after the current step by raising
    TrainingStopped; the epochs finished before it are already in `checkpoint` and on_epoch's files.
    """
    # Subnormal floats make CPU matrix multiplies ~100x slower. The report's recipe (raw 0-255
    # pixels) saturates its softmax, so its logit gradients fill with subnormals. Flush-to-zero
    # covers threads started after this; the logits hook below covers the rest.
    torch.set_flush_denormal(True)
    setup = setup_run(cfg)  # device, precision, TF32 and determinism: decided once, recorded with the result
    apply(setup)
    device, precision = setup.device, setup.precision
    data = data if data is not None else mnist_tensors(cfg.limit_train, device)
    # data loaded for another device (mnist_tensors() defaults to the CPU) moves once, not per batch
    x_train, y_train, x_test, y_test = (data[k].to(device) for k in ("x_train", "y_train", "x_test", "y_test"))
    n = holdout_split(len(x_train), cfg.holdout) if cfg.holdout else len(x_train)
    # the last images are held out (Keras' validation_split): evaluated after each epoch, never trained on
    x_held, y_held = x_train[n:], y_train[n:]
    x_train, y_train = x_train[:n], y_train[:n]
    torch.manual_seed(cfg.seed)  # as the report: seeds initialisation and the shuffle
    model = build_model(cfg.model).to(device)  # initialised on the CPU: the same weights on every device
    amp = precision == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    # oneDNN's convolutions want NHWC on CPU: in bf16 ~3x faster than fp32 NCHW on an AMX CPU; the
    # improved model's max-pool and BatchNorm are faster in NHWC in fp32 too (benchmarks/NOTES.md)
    channels_last = device.type == "cpu" and (amp or getattr(model, "channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, cfg, device)
    steps = math.ceil(n / cfg.batch_size)
    sched = epoch_sched = None  # stepped after every batch, after every epoch
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps
        peak = cfg.lr * min(1.0, total / cfg.min_peak_steps)  # short runs (cheap notebook defaults) need a lower peak
        sched = one_cycle(opt, peak, total)
    elif cfg.schedule == "step":  # epoch e trains at lr * lr_gamma ** (e - 1), as the peers' StepLR and LearningRateScheduler
        epoch_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=cfg.lr_gamma)
    # Augmentation numbers come from a CPU generator on every device (a CUDA generator draws others), an epoch's at once
    aug_gen = torch.Generator().manual_seed(cfg.seed + AUGMENT_SEED_OFFSET) if cfg.augment else None
    background = to_input(torch.zeros((), dtype=torch.uint8), cfg.normalize).item()  # a 0 pixel as the model sees it
    result = {"seed": cfg.seed, "precision": precision, "setup": setup.record(), "provenance": provenance(device),
              "epochs": [], "wall_seconds": 0.0}
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
        # the draws augment() makes batch by batch (4 per image, batch after batch), moved to the device once
        aug_u = torch.rand(4 * n, generator=aug_gen).to(device) if aug_gen is not None else None
        for b in range(steps):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            x = to_input(x_epoch[batch], cfg.normalize)  # (B, 1, 28, 28)
            y = y_epoch[batch]
            if aug_u is not None:
                x = jitter(x, aug_u[4 * batch.start:4 * batch.start + 4 * len(y)].view(4, -1), background,
                           cfg.augment_degrees, cfg.augment_scale, cfg.augment_shift)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
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
        if epoch_sched is not None:
            epoch_sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        hit = pred == y_epoch
        ev = evaluate(model, x_test, y_test, cfg)
        rep = report_test_counting(ev, y_test)
        held = evaluate(model, x_held, y_held, cfg) if len(x_held) else None
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
        if held is not None:  # what the Keras example prints as val_loss and val_accuracy
            row.update(holdout_loss=held["loss"], holdout_acc=held["acc"])
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


def train_runs(cfg: TrainConfig, runs: int = 1, out_dir=None, resume: bool = True, progress=None,
               keep_models: bool = False, stop: threading.Event | None = None, wait: bool = False,
               move_aside: bool = False) -> dict:
    """Train runs with seeds cfg.seed, cfg.seed+1, ...; metrics.json and epochs.csv are rewritten after every epoch.

    out_dir is a run folder (labkit.runfolder): checked and locked before the data loads, so a second
    writer is refused (or waits, with `wait`). With `resume`, runs finished there under the same config
    and setup are kept instead of retrained; a run cut off halfway is trained again from its start.
    Without it, earlier runs move to a replaced-TIMESTAMP/ subfolder (another config's only with `move_aside`).
    """
    from .progress import Progress

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a whole number >= 1, not {runs!r}")
    cfg.replace(seed=cfg.seed + runs - 1)  # the last run's seed must be one TrainConfig takes (ConfigError)
    run_setup = setup_run(cfg)
    device, setup = run_setup.device, (run_setup.device.type, run_setup.precision)
    folder = RunFolder(out_dir) if out_dir is not None else None
    if folder is not None:
        folder.prepare(wait=wait)
    try:
        done: dict[int, dict] = {}
        if folder is not None and resume:
            done = folder.finished(cfg, setup)
        elif folder is not None:
            moved = folder.start_over(cfg, move_aside)
            if moved is not None:
                print(f"earlier runs in {display_path(folder.path)} moved to {moved.name}/", flush=True)
        data = mnist_tensors(cfg.limit_train, device)
        metrics = {"config": cfg.to_dict(), "runs_requested": runs, "provenance": provenance(device), "runs": []}
        seeds = [cfg.seed + i for i in range(runs)]
        others = [done[s] for s in sorted(done) if s not in seeds]  # finished runs of other seeds stay in the file

        def save():
            if folder is not None:
                folder.write({**metrics, "runs": metrics["runs"] + others})

        progress = progress if progress is not None else Progress(runs, cfg.epochs)
        models = []
        for i, seed in enumerate(seeds):
            if seed in done:
                metrics["runs"].append(done[seed])
                then = (done[seed].get("provenance") or {}).get("git_commit", "unknown")
                now = metrics["provenance"]["git_commit"]
                note = "" if then == now else f" (trained at commit {then[:12]}, code now at {now[:12]})"
                print(f"run {i + 1}/{runs} (seed {seed}): finished earlier, loaded from {folder.path.name}{note}")
                if keep_models:
                    models.append(load_checkpoint(folder.checkpoint(seed), device)[0])
                continue
            metrics["runs"].append({"seed": seed, "epochs": []})

            def on_epoch(result, row, _slot=len(metrics["runs"]) - 1):
                metrics["runs"][_slot] = {k: v for k, v in result.items() if k != "final_model"}
                save()

            progress.start_run(i, seed)
            result = train_run(cfg.replace(seed=seed), data=data,
                               checkpoint=folder.checkpoint(seed) if folder is not None else None,
                               on_epoch=on_epoch, progress=progress, stop=stop)
            if keep_models:
                models.append(result["final_model"])
        if others:
            print(f"{display_path(folder.path)} also keeps finished run(s) of seed(s) "
                  f"{', '.join(str(r['seed']) for r in others)}", flush=True)
        save()  # also when every run was loaded: a rebuilt metrics.json is written back
    finally:
        if folder is not None:
            folder.release()
    if keep_models:
        metrics["models"] = models
    return metrics


class TrainingJob:
    """`train_runs` of one run in a background thread, with Stop: its state, finished epochs and result.

    A view (the notebook's TrainPanel) passes callbacks, called from the training thread:
    on_step(epoch, step, steps), on_epoch(row) and on_end(job) once the thread is done.
    """

    def __init__(self, cfg: TrainConfig, out_dir, on_step=None, on_epoch=None, on_end=None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.on_step, self.on_epoch, self.on_end = on_step, on_epoch, on_end
        self.state = "idle"  # idle, running, done, stopped, error
        self.rows: list[dict] = []  # finished epochs
        self.metrics: dict | None = None  # train_runs' result (metrics.json after a stop)
        self.error: BaseException | None = None
        self.position = (0, 0, 0)  # (epoch, step, steps) last reported
        self.seconds = 0.0
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

    # the Progress interface train_runs reports to
    def start_run(self, run_index: int, seed: int) -> None:
        pass

    def batch(self, epoch: int, step: int, steps: int) -> None:
        self.position = (epoch, step, steps)
        if self.on_step is not None:
            self.on_step(epoch, step, steps)

    def epoch_done(self, row: dict) -> None:
        self.rows.append(dict(row))
        if self.on_epoch is not None:
            self.on_epoch(row)

    def _work(self) -> None:
        t0 = time.perf_counter()
        try:
            # each Train is a fresh run: whatever the folder held moves to replaced-TIMESTAMP/
            self.metrics = train_runs(self.cfg, runs=1, out_dir=self.out_dir, resume=False, progress=self,
                                      stop=self._stop, move_aside=True)
            self.state = "done"
        except TrainingStopped:
            self.state = "stopped"
            try:
                self.metrics = RunFolder(self.out_dir).metrics()
            except ValueError:
                self.metrics = None
        except Exception as e:  # kept for the view: a thread's traceback would reach no one
            self.state, self.error = "error", e
        finally:
            self.seconds = time.perf_counter() - t0
            if self.on_end is not None:
                self.on_end(self)

    def start(self) -> threading.Thread:
        """Start training in a daemon thread (returned)."""
        self.state = "running"
        self.thread = threading.Thread(target=self._work, name="labkit-training-job", daemon=True)
        self.thread.start()
        return self.thread

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        """Training ends after the current step; finished epochs stay on disk."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the thread ends (or timeout); the job's state."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.state
