"""Seconds per epoch: the report's training loop vs labkit's, per CPU level, measured side by side.

    python benchmarks/train_speed.py [--rounds 10] [--no-improved] [--levels all|native|x86-64-v3,...] [--profile]
                                     [--torch-isa avx2]

Each contender trains in its own worker process (so peak memory is its own, and the report's
process never imports labkit.train, whose flush-to-zero setting would speed it up). labkit's
baseline runs once per CPU level this host can run (LABKIT_CPU_LEVEL = x86-64-v2, -v3 = AVX2,
-v4 = AVX-512, native), so an AVX-512 machine shows what an AVX2 CPU gets, and once without the
kernel (LABKIT_NO_KERNEL: torch's ops; slower than the report's loop would be a bug). The workers
take turns, one epoch at a time, never overlapping: round r times epoch r of each, so all are at
the same point of training. Prints the CPU, seconds per epoch (median and spread), each ratio to
the report's loop, samples per second and peak RSS, and what the improved model's full recipe
(its epochs with their evaluations) costs in epochs of the report's loop (budget: <= 20).
--torch-isa avx2 also caps torch's own kernels (ATen, oneDNN, MKL) at AVX2 in every worker, the
report's loop included, so an AVX-512 host times what an AVX2 CPU with its cores would run. With a
GPU it also times the report's full protocol (10 runs x 50 epochs). benchmarks/NOTES.md holds the measurements per machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

N_TRAIN = 60_000
# Environment that caps torch's own CPU kernels at an ISA: ATen's dispatch, oneDNN's convolutions, MKL's GEMMs.
TORCH_ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _send(obj) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _wait_go() -> None:
    """Block until the parent says go; exit if it has gone (no orphans left training)."""
    if not sys.stdin.readline():
        sys.exit(0)


def worker(kind: str, rounds: int) -> None:
    """Train one epoch per 'go' line on stdin; answer each with its seconds and peak RSS."""
    import torch

    if kind == "report":
        from labkit import reference as R

        state = R.setup(R.prepare_mnist_dir())
        _send({"ready": True})
        for _ in range(rounds):
            _wait_go()
            t0 = time.perf_counter()
            with _quiet():
                out = R.train_epoch(state)
            _send({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "train_acc": out["train_acc"]})
        _wait_go()  # exit only when the parent closes: a worker's teardown must not overlap another's epoch
        return
    from labkit import fastpath
    from labkit.recipes import recipe
    from labkit.train import train_run

    cfg = recipe("improved" if kind == "improved" else "baseline", epochs=rounds, device="cpu")
    if kind == "improved":  # its model never calls the kernel
        _send({"ready": True})
    else:
        k = fastpath.kernel()  # compile (or load) the conv-pool kernel before the clock starts
        _send({"ready": True, "kernel": repr(k) if k else f"none ({fastpath.kernel_error() or 'off'})"})

    waited = [0.0]  # seconds spent waiting for the other contenders, left out of the run's wall time

    def on_epoch(result, row):
        _send({"seconds": row["seconds"], "wall": result["wall_seconds"] - waited[0], "peak_mb": _peak_mb(),
               "train_acc": row["train_acc"], "test_acc": row["test_acc"], "precision": result["precision"]})
        if row["epoch"] < rounds:
            t0 = time.perf_counter()
            _wait_go()
            waited[0] += time.perf_counter() - t0

    _wait_go()
    train_run(cfg, on_epoch=on_epoch)
    _wait_go()
    del torch


class _quiet:
    """Send the report loop's prints to stderr so the protocol on stdout stays clean."""

    def __enter__(self):
        self.old, sys.stdout = sys.stdout, sys.stderr

    def __exit__(self, *exc):
        sys.stdout = self.old


class Worker:
    def __init__(self, kind: str, rounds: int, env: dict[str, str]):
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--rounds", str(rounds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, env={**os.environ, **env})
        self.hello = self._read()  # built and loaded, before any clock starts

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.kind} worker died (exit {self.proc.wait()})")
            if line.startswith("@@"):
                return json.loads(line[2:])

    def epoch(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def profile_steps(n: int = 20) -> None:
    """Where a training step's milliseconds go: the report's forward vs labkit's, subnormals on/off."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import profile

    from labkit.data import load_mnist
    from labkit.models import BaselineCNN

    images, labels = load_mnist("train")
    x = torch.tensor(images[:128]).unsqueeze(1).float()
    y = torch.tensor(labels[:128]).long()
    tiny = torch.finfo(torch.float32).tiny  # labkit.train's hook; importing it would set flush-to-zero here
    flush_subnormal = lambda g: g.masked_fill(g.abs() < tiny, 0.0)
    # On a batch trained to saturation: the report's step as it runs (its softmax gradients turn
    # subnormal), then labkit's (fused conv-pool kernel, fc2 @ fc1 products, fused SGD, subnormal
    # gradients flushed).
    for name, fwd in (("report's step (conv, max_pool2d, two Linear), saturated batch", "forward_reference"),
                      ("labkit's step (conv_pool op, W2 @ W1 chain, fused SGD), same batch", "forward")):
        torch.manual_seed(1)
        model = BaselineCNN()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=fwd == "forward")

        def step():
            opt.zero_grad(set_to_none=True)
            logits = getattr(model, fwd)(x)
            if fwd == "forward":
                logits.register_hook(flush_subnormal)
            F.cross_entropy(logits, y).backward()
            opt.step()

        for _ in range(200):  # train on the batch until its softmax saturates, as in real training
            step()
        with profile() as prof:
            for _ in range(n):
                step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / n / 1000
        print(f"\n{name}: {total:.2f} ms per step (self CPU time, {n} steps)")
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
            print(f"  {e.key:<45} {e.self_cpu_time_total / n / 1000:7.2f} ms")


def gpu_protocol() -> None:
    import torch

    from labkit.recipes import recipe
    from labkit.progress import Progress
    from labkit.stats import summarize
    from labkit.train import train_runs

    t0 = time.perf_counter()
    metrics = train_runs(recipe("baseline", device="cuda"), runs=10, progress=Progress(10, 50, live=False, stream=sys.stderr))
    wall = time.perf_counter() - t0
    s = summarize(metrics)
    print(f"\nGPU ({torch.cuda.get_device_name()}): report protocol, 10 runs x 50 epochs: {wall:.1f} s wall; "
          f"test acc mean {s['test']['mean']:.4f}")


def _levels(arg: str) -> list[str]:
    from labkit import fastpath

    if arg == "all":
        return fastpath.supported_levels()
    levels = arg.split(",")
    for lv in levels:
        if lv not in fastpath.supported_levels():
            raise SystemExit(f"train_speed: level {lv!r} is not one this CPU runs ({', '.join(fastpath.supported_levels())})")
    return levels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="epochs timed per contender (default 10)")
    ap.add_argument("--no-improved", action="store_true", help="skip the improved model")
    ap.add_argument("--levels", default="all", help="CPU levels for labkit's baseline: all (default: every level "
                    "this CPU runs), or a comma-separated list of x86-64-v2, x86-64-v3, x86-64-v4, native")
    ap.add_argument("--no-fallback", action="store_true", help="skip the torch-ops fallback (no kernel)")
    ap.add_argument("--profile", action="store_true", help="also print a per-op profile of one step")
    ap.add_argument("--torch-isa", choices=sorted(TORCH_ISA_CAPS), help="cap torch's own kernels at this ISA in every "
                    "worker (the report's loop too): an AVX-512 host then runs what an AVX2 CPU runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.rounds)

    if args.torch_isa:  # before torch is imported here, so the header shows the capped capability too
        os.environ.update(TORCH_ISA_CAPS[args.torch_isa])
    import torch

    from labkit import device, fastpath

    contenders = {"report": {}}  # name -> environment of its worker
    for lv in _levels(args.levels):
        contenders[f"labkit {lv}"] = {"LABKIT_CPU_LEVEL": lv}
    if not args.no_fallback:
        contenders["labkit no kernel"] = {"LABKIT_NO_KERNEL": "1"}
    if not args.no_improved:
        contenders["improved"] = {}
    native = os.environ.get("LABKIT_CPU_LEVEL") or "native"
    print(f"train_speed: {args.rounds} round(s), one epoch of 60,000 images per contender per round, taking turns")
    print(f"CPU: {device.cpu_name()} ({platform.machine()}); levels it runs: {', '.join(fastpath.supported_levels())}")
    print(f"ISA: {device.isa_summary()}")
    print(f"labkit's default level here: {fastpath.cpu_level()} (LABKIT_CPU_LEVEL={native}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, torch's own CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args.torch_isa:
        print(f"torch's kernels capped at {args.torch_isa.upper()} in every worker ({', '.join(f'{k}={v}' for k, v in TORCH_ISA_CAPS[args.torch_isa].items())}): "
              "this CPU's cores, caches and clock with an AVX2 CPU's instructions")
    workers = {}
    try:
        for k, env in contenders.items():
            workers[k] = Worker(k.split()[0] if k.startswith(("report", "improved")) else "labkit", args.rounds, env)
            if "kernel" in workers[k].hello:
                print(f"  {k:<18} kernel: {workers[k].hello['kernel']}")
        results = {k: [] for k in contenders}
        for r in range(args.rounds):
            for k in contenders:
                res = workers[k].epoch()
                results[k].append(res)
                print(f"  round {r + 1}  {k:<18} {res['seconds']:6.2f} s  train acc {res['train_acc']:.4f}", flush=True)
    finally:
        for w in workers.values():
            w.close()

    print(f"\n{'contender (model)':<32} {'s/epoch median':>15} {'min-max':>13} {'vs report':>9} {'samples/s':>10} {'peak RSS':>9}")
    med = {k: statistics.median(x["seconds"] for x in results[k]) for k in contenders}
    for k in contenders:
        secs = [x["seconds"] for x in results[k]]
        peak = max(x["peak_mb"] for x in results[k])
        label = {"report": "report's loop (baseline)",
                 "improved": f"labkit (improved, {results[k][-1].get('precision', '?')})"}.get(k, f"{k} (baseline)")
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(results["report"], results[k])]
        print(f"{label:<32} {med[k]:>15.2f} {min(secs):>6.2f}-{max(secs):<6.2f} {statistics.median(ratios):>8.2f}x "
              f"{N_TRAIN / med[k]:>10,.0f} {peak:>7,.0f} MB")
    print()
    for k in contenders:
        if k.startswith("labkit"):
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(results["report"], results[k])]
            target = ("target > 1x: a fallback slower than the report's loop is a bug" if "no kernel" in k
                      else "target >= 3x")
            kern = workers[k].hello.get("kernel", "")
            print(f"speed-up of {k} over the report's loop: median {statistics.median(ratios):.2f}x "
                  f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}); {target}; kernel {kern}")
    if "improved" in results:
        from labkit.recipes import recipe

        rows = results["improved"]  # wall: this run's training, evaluation and checkpoints so far
        walls = [b["wall"] - a["wall"] for a, b in zip([{"wall": 0.0}] + rows, rows)]
        epochs = recipe("improved").epochs
        cost = epochs * statistics.median(walls)
        print(f"improved model's full recipe ({epochs} epochs, each with its test evaluation, "
              f"{results['improved'][-1].get('precision', '?')}): ~{cost:.0f} s = "
              f"{cost / med['report']:.1f} epochs of the report's loop; budget <= 20")
    best = min((k for k in contenders if k.startswith("labkit") and "no kernel" not in k), key=med.get, default=None)
    if best:
        print(f"report protocol (10 runs x 50 epochs), training passes only: {best} ~{med[best] * 500 / 60:.1f} min, "
              f"the report's loop ~{med['report'] * 500 / 60:.1f} min")
    if args.profile:
        profile_steps()
    if torch.cuda.is_available():
        gpu_protocol()


if __name__ == "__main__":
    main()
