"""Every path a CUDA device reaches, run once on one GPU, printing expected against got.

    python benchmarks/gpu_check.py [--quick] [--limit-train N] [--epochs-timed K]

A few minutes on one GPU; needs only torch, numpy, Pillow and matplotlib (labkit's own needs). Checks:
the device and precision choice (bf16 only at compute capability 8+), TF32 off and cuDNN deterministic;
data on the GPU, and CPU data given to a CUDA run; one baseline epoch under
torch.cuda.set_sync_debug_mode("warn") (no synchronising call from step 2 to the last) with its
accuracy against the shipped CPU run's epoch 1; the same seed twice (identical); CPU and CUDA batch order
(identical inputs); the baseline in bf16; the improved recipe for one epoch, its checkpoint re-evaluated
on the CPU (within 2 test images); train_runs in a thread with Stop; layer_table, input_gradients and
Predictor("cuda"); fp32 convolution error against float64 with TF32 on and off; seconds per epoch of
both models, with the report's protocol (10 x 50 epochs) and the improved one (10 x 5) extrapolated.
Without a GPU it prints one line and exits 0; it exits 1 if any check fails.
--quick trains on QUICK_LIMIT images instead of all 60,000 (no comparison with the shipped run).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK_LIMIT = 5000  # training images under --quick
SAME_SEED_LIMIT = 10_000  # training images of the same-seed-twice runs
ORDER_LIMIT = 2048  # training images of the CPU vs CUDA batch-order runs (16 batches)
SHIPPED_BASELINE = ROOT / "data" / "runs" / "baseline-e50" / "metrics.json"


class Checks:
    """Prints one 'name: expected X / got Y  OK|FAIL' line per check and counts the failures."""

    def __init__(self):
        self.lines: list[str] = []
        self.failed = 0

    def check(self, name: str, expected, got, ok: bool) -> bool:
        line = f"{name}: expected {expected} / got {got}  {'OK' if ok else 'FAIL'}"
        print(line, flush=True)
        self.lines.append(line)
        self.failed += not ok
        return ok

    def info(self, name: str, text: str) -> None:
        print(f"{name}: {text}", flush=True)


def _limit(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 60_000:
        raise argparse.ArgumentTypeError(f"must be 1..60000, not {n}")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {n}")
    return n


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"train on {QUICK_LIMIT:,} images, not all 60,000")
    p.add_argument("--limit-train", type=_limit, help="training images of the full-size checks (default: all)")
    p.add_argument("--epochs-timed", type=_positive, default=1, help="epochs timed per model, after one warm-up epoch")
    args = p.parse_args(argv)
    if args.quick and args.limit_train is None:
        args.limit_train = QUICK_LIMIT
    return args


# ---------------------------------------------------------------- helpers


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _same_weights(a, b) -> bool:
    return all(x.shape == y.shape and bool((x.cpu() == y.cpu()).all()) for x, y in zip(a.state_dict().values(),
                                                                                     b.state_dict().values()))


def _recorded_inputs(fn):
    """(fn(), sums of each training batch's model input as float64): the batches a run fed its model, in order."""
    import torch
    import labkit.train as T

    sums, real = [], T.build_model

    def build(name):
        model = real(name)
        model.register_forward_pre_hook(lambda m, inp: sums.append(inp[0].detach().double().sum()) if m.training else None)
        return model

    T.build_model = build
    try:
        result = fn()
    finally:
        T.build_model = real
    return result, torch.stack(sums).cpu()


class _SyncCounter:
    """A progress object: counts sync warnings raised between the first step's report and the last."""

    def __init__(self, caught: list):
        self.caught, self.at_first, self.at_last, self.steps = caught, None, None, 0

    def _syncs(self) -> int:
        return sum("synchroniz" in str(w.message) for w in self.caught)

    def batch(self, epoch, step, steps):
        self.steps = steps
        if step == 1:
            self.at_first = self._syncs()
        if step == steps:
            self.at_last = self._syncs()

    def epoch_done(self, row):
        pass


# ---------------------------------------------------------------- the checks


def check_setup(c: Checks, torch) -> None:
    from labkit.recipes import recipe
    from labkit.device import apply, setup_run

    cap = torch.cuda.get_device_capability()
    setup = setup_run(recipe("improved"))
    c.check("improved recipe, device auto", "cuda", setup.device.type, setup.device.type == "cuda")
    want = "bf16" if cap >= (8, 0) else "fp32"
    c.check(f"improved recipe, precision auto at capability {cap[0]}.{cap[1]}", want, setup.precision,
            setup.precision == want)
    base = setup_run(recipe("baseline", precision="auto"))
    c.check("baseline, precision auto", "fp32", base.precision, base.precision == "fp32")
    apply(setup)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    c.check("flags after apply (matmul TF32, cuDNN TF32, deterministic, benchmark)", (False, False, True, False), flags,
            flags == (False, False, True, False))
    rec = setup.record()
    c.check("setup record has CUDA, cuDNN, capability", "all present",
            f"cuda {rec.get('cuda')}, cudnn {rec.get('cudnn')}, capability {rec.get('capability')}",
            all(rec.get(k) for k in ("cuda", "cudnn", "capability")))


def check_data(c: Checks, torch, limit, ctx) -> None:
    from labkit.recipes import recipe
    from labkit.data import mnist_tensors
    from labkit.train import train_run

    data = ctx["data"] = mnist_tensors(limit, "cuda")  # the full-size checks' data, loaded once
    devices = sorted({v.device.type for v in data.values()})
    c.check("mnist_tensors(device='cuda')", ["cuda"], devices, devices == ["cuda"])
    cpu_data = mnist_tensors(512, "cpu")
    r = train_run(recipe("baseline", epochs=1, limit_train=512, device="cuda"), data=cpu_data)
    where = sorted({p.device.type for p in r["final_model"].parameters()})
    c.check("CPU data given to a CUDA run", "trains, model on cuda", f"trained, model on {where}", where == ["cuda"])
    c.check("result['setup'] of a CUDA run", "device_type cuda", f"device_type {r['setup']['device_type']}",
            r["setup"]["device_type"] == "cuda" and r["provenance"].get("cudnn") is not None)


def check_baseline_epoch(c: Checks, torch, limit, ctx) -> None:
    from labkit.recipes import recipe
    from labkit.train import train_run

    data = ctx["data"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = _SyncCounter(caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            r = train_run(recipe("baseline", epochs=1, limit_train=limit, device="cuda"), data=data, progress=counter)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    inside = counter.at_last - counter.at_first
    c.check(f"baseline epoch: synchronising calls in steps 2..{counter.steps}", 0, inside, inside == 0)
    c.info("baseline epoch: synchronising calls in the whole run (outside the step loop: shuffle, evaluation)",
           str(counter._syncs()))
    row = ctx["baseline_fp32"] = r["epochs"][0]
    if limit is not None:
        c.info("baseline epoch vs the shipped CPU run", "not compared (--limit-train / --quick)")
        return
    from labkit.records import load_metrics

    shipped = load_metrics(SHIPPED_BASELINE)["runs"][0]["epochs"][0]  # seed 1, epoch 1
    for key in ("test_acc", "train_acc"):
        c.check(f"baseline epoch 1 {key}, seed 1, vs shipped CPU run (within 0.005)", f"{shipped[key]:.4f}",
                f"{row[key]:.4f}", abs(row[key] - shipped[key]) <= 0.005)


def check_same_seed(c: Checks, torch, limit) -> None:
    from labkit.recipes import recipe
    from labkit.data import mnist_tensors
    from labkit.train import train_run

    n = min(limit or SAME_SEED_LIMIT, SAME_SEED_LIMIT)
    data = mnist_tensors(n, "cuda")
    for model in ("baseline", "improved"):
        cfg = recipe(model, epochs=1, limit_train=n, device="cuda")
        a, b = train_run(cfg, data=data), train_run(cfg, data=data)
        same = _strip(a["epochs"]) == _strip(b["epochs"]) and _same_weights(a["final_model"], b["final_model"])
        c.check(f"{model}, same seed twice ({n:,} images, {a['precision']})", "identical metrics and weights",
                "identical" if same else f"differ: {a['epochs'][0]['train_loss']!r} vs {b['epochs'][0]['train_loss']!r}",
                same)


def check_batch_order(c: Checks, torch) -> None:
    from labkit.recipes import recipe
    from labkit.data import mnist_tensors
    from labkit.train import train_run

    data = mnist_tensors(ORDER_LIMIT, "cpu")
    for model, tol in (("baseline", 0.0), ("improved", 1e-4)):
        cfg = recipe(model, epochs=2, limit_train=ORDER_LIMIT)
        cpu_run, cpu = _recorded_inputs(lambda: train_run(cfg.replace(device="cpu"), data=data))
        cuda_run, cuda = _recorded_inputs(lambda: train_run(cfg.replace(device="cuda"), data=data))
        err = ((cpu - cuda).abs() / cpu.abs().clamp_min(1e-9)).max().item() if len(cpu) == len(cuda) else float("inf")
        what = "identical inputs" if tol == 0 else f"inputs within {tol:g} (augmentation computed on each device)"
        c.check(f"{model}, CPU vs CUDA batches, 2 epochs of {ORDER_LIMIT:,} images", what,
                f"{len(cuda)} batches, max relative difference {err:.2g}", err <= tol)
        c.info(f"{model}, CPU vs CUDA after 2 epochs", f"test_acc {cpu_run['epochs'][-1]['test_acc']:.4f} (CPU, "
               f"{cpu_run['precision']}) vs {cuda_run['epochs'][-1]['test_acc']:.4f} (CUDA, {cuda_run['precision']})")


def check_baseline_bf16(c: Checks, torch, limit, ctx) -> None:
    from labkit.recipes import recipe
    from labkit.train import train_run

    r = train_run(recipe("baseline", epochs=1, limit_train=limit, precision="bf16", device="cuda"), data=ctx["data"])
    fp32 = ctx["baseline_fp32"]["test_acc"]
    got = r["epochs"][0]["test_acc"]
    c.check("baseline in bf16, 1 epoch: test_acc within 0.02 of fp32", f"{fp32:.4f}", f"{got:.4f}", abs(got - fp32) <= 0.02)


def check_improved(c: Checks, torch, limit, ctx) -> None:
    from labkit.checkpoint import load_checkpoint
    from labkit.predict import predict_proba
    from labkit.recipes import recipe
    from labkit.data import mnist_tensors
    from labkit.train import evaluate, train_run

    cfg = recipe("improved", epochs=1, limit_train=limit, device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.pt"
        r = train_run(cfg, data=ctx["data"], checkpoint=path)
        recorded = r["epochs"][0]["test_acc"]
        model, _ = load_checkpoint(path, "cpu")
    cpu = mnist_tensors(1, "cpu")
    acc = (predict_proba(model, cpu["x_test"], cfg.normalize).argmax(1) == cpu["y_test"]).float().mean().item()
    c.check(f"improved, 1 epoch ({r['precision']}): CPU re-evaluation of its checkpoint (within 2 images)",
            f"{recorded:.4f}", f"{acc:.4f}", abs(acc - recorded) <= 2 / 10_000 + 1e-9)
    if limit is None:
        c.check("improved, 1 epoch: test accuracy", "> 0.97", f"{recorded:.4f}", recorded > 0.97)
    gpu_model = r["final_model"]
    ctx["improved_model"] = gpu_model
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:  # what TF32 would have done to the recorded number
        tf32 = evaluate(gpu_model, ctx["data"]["x_test"], ctx["data"]["y_test"], cfg)["acc"]
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    c.info("improved, evaluated on CUDA with TF32 on", f"test_acc {tf32:.4f} ({abs(tf32 - acc) * 10_000:.0f} images "
           "from the CPU's)")


def check_stop(c: Checks, torch) -> None:
    from labkit.recipes import recipe
    from labkit.progress import Progress
    from labkit.records import load_metrics
    from labkit.train import TrainingStopped, train_runs

    stop = threading.Event()

    class StopAfterOne(Progress):
        def epoch_done(self, row):
            super().epoch_done(row)
            stop.set()

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w") as log:
        out, outcome = Path(tmp) / "runs", {}

        def train():
            try:
                train_runs(recipe("baseline", epochs=3, limit_train=8192, device="cuda"), runs=2, out_dir=out,
                           progress=StopAfterOne(2, 3, live=False, stream=log), stop=stop)
                outcome["error"] = None
            except BaseException as e:  # reported below
                outcome["error"] = e

        thread = threading.Thread(target=train, name="gpu_check-train")
        thread.start()
        thread.join(300)
        err = outcome.get("error", "still running")
        epochs = len(load_metrics(out / "metrics.json")["runs"][0]["epochs"]) if (out / "metrics.json").exists() else 0
        c.check("train_runs in a thread, Stop after epoch 1", "TrainingStopped, 1 epoch saved, checkpoint",
                f"{type(err).__name__ if isinstance(err, BaseException) else err}, {epochs} epoch(s) saved, checkpoint "
                f"{'present' if (out / 'run-seed1.pt').exists() else 'missing'}",
                isinstance(err, TrainingStopped) and epochs == 1 and (out / "run-seed1.pt").exists())


def check_inference(c: Checks, torch, ctx) -> None:
    from labkit.predict import input_gradients
    from labkit.models import build_model, layer_table
    from labkit.predict import Predictor

    for name in ("baseline", "improved"):
        text = layer_table(build_model(name).cuda())
        c.check(f"layer_table() of a CUDA {name}", "a table with a total", text.splitlines()[-1].split()[0],
                text.splitlines()[-1].startswith("total"))
    x = ctx["data"]["x_test"][:4]
    model = ctx["improved_model"]
    sal = input_gradients(model, x, normalize=True, target=[7, 2, 1, 0])
    cpu_sal = input_gradients(model.cpu(), x.cpu(), normalize=True, target=[7, 2, 1, 0])
    model.cuda()
    err = ((sal.cpu() - cpu_sal).abs().max() / cpu_sal.abs().max()).item()
    c.check("input_gradients on CUDA, target=[...], vs CPU", "relative difference < 1e-3", f"{err:.2g}", err < 1e-3)
    gpu, cpu = Predictor(device="cuda"), Predictor(device="cpu")
    arr = ctx["data"]["x_test"][:8, 0].cpu().numpy()
    pg, pc = gpu.probabilities(arr), cpu.probabilities(arr)
    diff = float(abs(pg - pc).max())
    c.check('Predictor(device="cuda") vs "cpu" on 8 test digits', "same digits, probabilities within 1e-4",
            f"digits {'same' if (pg.argmax(1) == pc.argmax(1)).all() else 'differ'}, max difference {diff:.2g}",
            bool((pg.argmax(1) == pc.argmax(1)).all()) and diff < 1e-4)


def check_tf32(c: Checks, torch) -> None:
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 64, 14, 14, device="cuda", generator=gen)
    w = torch.randn(128, 64, 3, 3, device="cuda", generator=gen) / 24  # the improved model's middle convolution
    ref = F.conv2d(x.double(), w.double(), padding=1)
    errors = {}
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        errors[tf32] = ((F.conv2d(x, w, padding=1).double() - ref).abs().max() / ref.abs().max()).item()
    torch.backends.cudnn.allow_tf32 = False
    c.check("fp32 convolution vs float64, TF32 off (max error / max value)", "< 1e-5", f"{errors[False]:.2g}",
            errors[False] < 1e-5)
    ampere = torch.cuda.get_device_capability() >= (8, 0)
    c.info("fp32 convolution vs float64, TF32 on", f"{errors[True]:.2g}" + ("" if ampere else " (no TF32 before capability 8.0)"))


def check_speed(c: Checks, torch, limit, epochs_timed: int, ctx) -> None:
    from labkit.recipes import recipe
    from labkit.records import load_metrics
    from labkit.train import train_run

    shipped = {"baseline": load_metrics(SHIPPED_BASELINE), "improved": load_metrics(
        ROOT / "data" / "runs" / "improved-e5-fp32" / "metrics.json")}
    for model, precision, runs, epochs in (("baseline", "fp32", 10, 50), ("improved", "auto", 10, 5),
                                           ("improved", "fp32", 10, 5)):
        walls = []
        cfg = recipe(model, epochs=1 + epochs_timed, limit_train=limit, device="cuda", precision=precision)
        r = train_run(cfg, data=ctx["data"], on_epoch=lambda result, row: walls.append(result["wall_seconds"]))
        train_s = statistics.median(e["seconds"] for e in r["epochs"][1:])
        wall_s = statistics.median(b - a for a, b in zip(walls, walls[1:]))
        total = runs * epochs * wall_s
        cpu = statistics.median(e["seconds"] for run in shipped[model]["runs"] for e in run["epochs"])
        c.info(f"{model} ({r['precision']}) seconds per epoch", f"{train_s:.2f} s training, {wall_s:.2f} s with its test "
               f"evaluation (shipped CPU run: {cpu:.2f} s training, {shipped[model]['provenance']['device_name']})")
        c.info(f"{model} protocol, {runs} runs x {epochs} epochs, extrapolated",
               f"{int(total // 60)} min {total % 60:.0f} s" + ("" if limit is None else f" (from {limit:,} images)"))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: gpu_check skipped")
        return 0
    c = Checks()
    cap = torch.cuda.get_device_capability()
    c.info("GPU", f"{torch.cuda.get_device_name()} (capability {cap[0]}.{cap[1]}), torch {torch.__version__}, "
           f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    ctx: dict = {}
    t0 = time.perf_counter()
    sections = [("device and precision", lambda: check_setup(c, torch)),
                ("data on the GPU", lambda: check_data(c, torch, args.limit_train, ctx)),
                ("baseline epoch", lambda: check_baseline_epoch(c, torch, args.limit_train, ctx)),
                ("same seed twice", lambda: check_same_seed(c, torch, args.limit_train)),
                ("CPU vs CUDA batch order", lambda: check_batch_order(c, torch)),
                ("baseline in bf16", lambda: check_baseline_bf16(c, torch, args.limit_train, ctx)),
                ("improved recipe", lambda: check_improved(c, torch, args.limit_train, ctx)),
                ("train_runs with Stop", lambda: check_stop(c, torch)),
                ("layer_table, input_gradients, Predictor", lambda: check_inference(c, torch, ctx)),
                ("TF32", lambda: check_tf32(c, torch)),
                ("speed", lambda: check_speed(c, torch, args.limit_train, args.epochs_timed, ctx))]
    for name, run in sections:
        try:
            run()
        except Exception as e:  # one broken path must not hide the others' results
            first = (str(e).strip().splitlines() or [""])[0]
            c.check(name, "no error", f"{type(e).__name__}: {first}", False)
    print(f"{len(c.lines)} checks, {c.failed} failed, {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
