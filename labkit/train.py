"""The one training path: epochs, runs, metrics, checkpoints and metrics.json."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import PROJECT_ROOT, TrainConfig
from .data import MNIST_SHA256, load_mnist
from .models import build_model

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of the training pixels scaled to [0, 1]
_TINY = torch.finfo(torch.float32).tiny  # smallest normal fp32

# Subnormal floats make CPU matrix multiplies ~100x slower. The report's recipe (raw 0-255
# pixels) saturates its softmax, so its logit gradients fill with subnormals. Flush-to-zero
# here covers threads started after this import; the logits hook in train_run covers the rest.
torch.set_flush_denormal(True)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": "auto" picks bf16 only where the hardware does it natively (CUDA, CPUs with AMX)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private; absent in older torch
    return "bf16" if device.type == "cpu" and amx() else "fp32"


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
    """Where a result came from: commit, versions, data checksums, device, time."""
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "data_sha256": dict(MNIST_SHA256),  # verified on every load_mnist
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if str(device).startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def mnist_tensors(limit_train: int | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """MNIST as uint8 image tensors (N, 1, 28, 28) and int64 labels on `device`."""
    out = {}
    for split in ("train", "test"):
        images, labels = load_mnist(split)
        if split == "train" and limit_train is not None:
            if not 0 < limit_train <= len(images):
                raise ValueError(f"limit_train must be in 1..{len(images)}, got {limit_train}")
            images, labels = images[:limit_train], labels[:limit_train]
        out[f"x_{split}"] = torch.tensor(images).unsqueeze(1).to(device)  # (N, 1, 28, 28) uint8
        out[f"y_{split}"] = torch.tensor(labels, dtype=torch.long).to(device)
    return out


def to_input(x_uint8: torch.Tensor, normalize: bool) -> torch.Tensor:
    """uint8 pixels -> the float input a model expects (raw 0-255, or MNIST-normalised)."""
    x = x_uint8.float()
    return (x / 255 - MNIST_MEAN) / MNIST_STD if normalize else x


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


@torch.no_grad()
def predict_proba(model, x_uint8, normalize: bool, batch: int = 1000) -> torch.Tensor:
    """Softmax probabilities (N, 10), float64, of a model on uint8 images (N, 1, 28, 28), in chunks."""
    model.eval()
    return torch.cat([F.softmax(model(to_input(x_uint8[i:i + batch], normalize)).double(), 1)
                      for i in range(0, len(x_uint8), batch)])


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


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_json(path: Path, obj) -> None:
    """Write JSON atomically: a run killed mid-write leaves the previous file intact."""
    _atomic_write(Path(path), lambda p: p.write_text(json.dumps(obj, indent=1)))


def train_run(cfg: TrainConfig, data: dict | None = None, checkpoint: Path | None = None,
              on_epoch=None, progress=None) -> dict:
    """Train one run of `cfg`; returns {seed, epochs: [...], ...}. Numbers depend only on cfg."""
    device = resolve_device(cfg.device)
    data = data if data is not None else mnist_tensors(cfg.limit_train, device)
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    n = len(x_train)
    torch.manual_seed(cfg.seed)  # as the report: seeds initialisation and the shuffle
    model = build_model(cfg.model).to(device)
    precision = resolve_precision(cfg.precision, device)
    amp = precision == "bf16"
    # oneDNN's bf16 convolutions want NHWC: ~3x faster than fp32 NCHW on an AMX CPU, slower without
    channels_last = amp and device.type == "cpu"
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
        result["epochs"].append(row)
        result["wall_seconds"] = round(time.perf_counter() - t_run, 3)  # training + evaluation so far
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, cfg, result)
        if on_epoch is not None:
            on_epoch(result, row)
        if progress is not None:
            progress.epoch_done(row)
    result["final_model"] = model
    return result


def save_checkpoint(path: Path, model, cfg: TrainConfig, result: dict) -> None:
    """State dict with the config, metrics and provenance that produced it, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": cfg.model,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "metrics": {k: v for k, v in result.items() if k not in ("final_model", "provenance")},
        "provenance": result.get("provenance") or provenance(resolve_device(cfg.device)),
    }
    _atomic_write(path, lambda p: torch.save(payload, p))


def load_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict) from a file save_checkpoint wrote."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ckpt["model"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def runs_dir(cfg: TrainConfig) -> Path:
    """outputs/runs/<model>-e<epochs>-<n train>: where a config's runs live, so reruns can resume."""
    from .config import OUTPUTS_DIR

    return OUTPUTS_DIR / "runs" / f"{cfg.model}-e{cfg.epochs}-{'all' if cfg.limit_train is None else cfg.limit_train}"


def write_csv(metrics: dict, path) -> None:
    """Every run's per-epoch numbers as one CSV table (seed, epoch, losses, accuracies, seconds)."""
    keys = ["train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    lines = [",".join(["model", "seed", "epoch", *keys])]
    for r in metrics["runs"]:
        for e in r["epochs"]:
            lines.append(",".join([metrics["config"]["model"], str(r["seed"]), str(e["epoch"]), *(repr(e[k]) for k in keys)]))
    _atomic_write(Path(path), lambda p: p.write_text("\n".join(lines) + "\n"))


def _comparable(config: dict) -> dict:
    """A config minus what runs may differ in; fields newer than a saved config take their defaults."""
    return {k: v for k, v in {**TrainConfig().to_dict(), **config}.items() if k not in ("seed", "device")}


def train_runs(cfg: TrainConfig, runs: int = 1, out_dir=None, resume: bool = True, progress=None,
               keep_models: bool = False) -> dict:
    """Train runs with seeds cfg.seed, cfg.seed+1, ...; metrics.json and epochs.csv are rewritten after every epoch.

    With `resume`, runs already finished in out_dir/metrics.json under the same config are kept
    instead of retrained; a run cut off halfway is trained again from its start.
    """
    from .progress import Progress

    device = resolve_device(cfg.device)
    out_dir = Path(out_dir) if out_dir is not None else None
    metrics = {"config": cfg.to_dict(), "runs_requested": runs, "provenance": provenance(device), "runs": []}
    done: dict[int, dict] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        old_path = out_dir / "metrics.json"
        if resume and old_path.exists():
            try:
                old = json.loads(old_path.read_text())
            except json.JSONDecodeError:
                old = {}
            if _comparable(old.get("config", {})) == _comparable(cfg.to_dict()):
                done = {r["seed"]: {**r, "provenance": r.get("provenance", old.get("provenance"))}  # each run keeps its own
                        for r in old.get("runs", [])
                        if len(r["epochs"]) == cfg.epochs and (out_dir / f"run-seed{r['seed']}.pt").exists()}
    progress = progress if progress is not None else Progress(runs, cfg.epochs)
    data = mnist_tensors(cfg.limit_train, device)
    models = []
    for i in range(runs):
        seed = cfg.seed + i
        if seed in done:
            metrics["runs"].append(done[seed])
            then = (done[seed].get("provenance") or {}).get("git_commit", "unknown")
            note = "" if then == metrics["provenance"]["git_commit"] else f" (trained at commit {then[:12]}, code now at {metrics['provenance']['git_commit'][:12]})"
            print(f"run {i + 1}/{runs} (seed {seed}): finished earlier, loaded from {out_dir.name}/metrics.json{note}")
            if keep_models:
                models.append(load_checkpoint(out_dir / f"run-seed{seed}.pt", device)[0])
            continue
        run_cfg = cfg.replace(seed=seed)
        metrics["runs"].append({"seed": seed, "epochs": []})

        def on_epoch(result, row, _slot=len(metrics["runs"]) - 1):
            metrics["runs"][_slot] = {k: v for k, v in result.items() if k != "final_model"}
            if out_dir is not None:
                save_json(out_dir / "metrics.json", metrics)
                write_csv(metrics, out_dir / "epochs.csv")

        progress.start_run(i, seed)
        ckpt = out_dir / f"run-seed{seed}.pt" if out_dir is not None else None
        result = train_run(run_cfg, data=data, checkpoint=ckpt, on_epoch=on_epoch, progress=progress)
        if keep_models:
            models.append(result["final_model"])
    if keep_models:
        metrics["models"] = models
    return metrics


def accuracy_stats(values) -> dict:
    """best, worst, mean and sample standard deviation (n-1) of a list of accuracies."""
    v = np.asarray(values, dtype=float)
    return {"best": v.max(), "worst": v.min(), "mean": v.mean(),
            "std": v.std(ddof=1) if len(v) > 1 else float("nan"), "n": len(v)}


def summarize(metrics: dict) -> dict:
    """The report's table from final epochs: {"train": stats, "test": stats}."""
    finals = [r["epochs"][-1] for r in metrics["runs"] if r["epochs"]]
    return {split: accuracy_stats([f[f"{split}_acc"] for f in finals]) for split in ("train", "test")}


def format_table(metrics: dict, report: dict | None = None) -> str:
    """Per-run final numbers, then best/worst/mean/std rows (with the report's beside them)."""
    lines = [f"{'seed':>6} {'train acc':>10} {'test acc':>10} {'s/epoch':>8}"]
    for r in metrics["runs"]:
        if r["epochs"]:
            f = r["epochs"][-1]
            sec = np.median([e["seconds"] for e in r["epochs"]])
            lines.append(f"{r['seed']:>6} {f['train_acc']:>10.4f} {f['test_acc']:>10.4f} {sec:>8.2f}")
    stats = summarize(metrics)
    lines.append("")
    lines.append(f"{'':<22} {'best':>8} {'worst':>8} {'mean':>9} {'std (n-1)':>10}")
    for split, name in (("train", "Training accuracy"), ("test", "Test accuracy")):
        s = stats[split]
        lines.append(f"{name:<22} {s['best']:>8.4f} {s['worst']:>8.4f} {s['mean']:>9.5f} {s['std']:>10.6f}")
        if report:
            r = report[split]
            lines.append(f"{'  the report':<22} {r['best']:>8.4f} {r['worst']:>8.4f} {r['mean']:>9.5f} {r['std']:>10.6f}")
    return "\n".join(lines)
