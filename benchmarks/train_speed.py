"""Seconds per epoch: the report's training loop vs labkit's, measured side by side.

    python benchmarks/train_speed.py [--rounds 10] [--no-improved] [--profile]

Each contender trains in its own worker process (so peak memory is its own, and the report's
process never imports labkit.train, whose flush-to-zero setting would speed it up). The workers
take turns, one epoch at a time, never overlapping: round r times epoch r of each, so both are at
the same point of training. Prints seconds per epoch (median and spread), the ratio, samples per
second and peak RSS. With a GPU it also times the report's full protocol (10 runs x 50 epochs).
See benchmarks/NOTES.md for what was tried and what each thing gave.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

N_TRAIN = 60_000


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
        import report_loop as R

        state = R.setup(R.prepare_mnist_dir())
        for _ in range(rounds):
            _wait_go()
            t0 = time.perf_counter()
            with _quiet():
                out = R.train_epoch(state)
            _send({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "train_acc": out["train_acc"]})
        _wait_go()  # exit only when the parent closes: a worker's teardown must not overlap another's epoch
        return
    from labkit.config import recipe
    from labkit.train import train_run

    cfg = recipe("seed" if kind == "labkit" else "improved", epochs=rounds, device="cpu")

    def on_epoch(result, row):
        _send({"seconds": row["seconds"], "peak_mb": _peak_mb(), "train_acc": row["train_acc"],
               "test_acc": row["test_acc"], "precision": result["precision"]})
        if row["epoch"] < rounds:
            _wait_go()

    from labkit import fastpath

    fastpath.kernel()  # compile (or load) the conv-pool kernel before the clock starts
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
    def __init__(self, kind: str, rounds: int):
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--rounds", str(rounds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT)

    def epoch(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.kind} worker died (exit {self.proc.wait()})")
            if line.startswith("@@"):
                return json.loads(line[2:])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def profile_steps(n: int = 20) -> None:
    """Where a training step's milliseconds go: the report's forward vs labkit's, subnormals on/off."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import profile

    from labkit.data import load_mnist
    from labkit.models import SeedCNN

    images, labels = load_mnist("train")
    x = torch.tensor(images[:128]).unsqueeze(1).float()
    y = torch.tensor(labels[:128]).long()
    tiny = torch.finfo(torch.float32).tiny  # labkit.train's hook; importing it would set flush-to-zero here
    flush_subnormal = lambda g: g.masked_fill(g.abs() < tiny, 0.0)
    # On a batch trained to saturation: the report's step as it runs (its softmax gradients turn
    # subnormal), then labkit's (fused conv-pool kernel, fc2 @ fc1 products, fused SGD, subnormal
    # gradients flushed).
    for name, fwd in (("report's step (conv, max_pool2d, two Linear), saturated batch", "forward_reference"),
                      ("labkit's step (conv-pool kernel, W2 @ W1 chain, fused SGD), same batch", "forward")):
        torch.manual_seed(1)
        model = SeedCNN()
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

    from labkit.config import recipe
    from labkit.progress import Progress
    from labkit.train import summarize, train_runs

    t0 = time.perf_counter()
    metrics = train_runs(recipe("seed", device="cuda"), runs=10, progress=Progress(10, 50, live=False, stream=sys.stderr))
    wall = time.perf_counter() - t0
    s = summarize(metrics)
    print(f"\nGPU ({torch.cuda.get_device_name()}): report protocol, 10 runs x 50 epochs: {wall:.1f} s wall; "
          f"test acc mean {s['test']['mean']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="epochs timed per contender (default 10)")
    ap.add_argument("--no-improved", action="store_true", help="skip the improved model")
    ap.add_argument("--profile", action="store_true", help="also print a per-op profile of one step")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.rounds)

    import platform

    import torch

    kinds = ["report", "labkit"] + ([] if args.no_improved else ["improved"])
    print(f"train_speed: {args.rounds} round(s), one epoch of 60,000 images per contender per round, taking turns")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    workers = {k: Worker(k, args.rounds) for k in kinds}
    results = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for k in kinds:
                res = workers[k].epoch()
                results[k].append(res)
                print(f"  round {r + 1}  {k:<8} {res['seconds']:6.2f} s  train acc {res['train_acc']:.4f}", flush=True)
    finally:
        for w in workers.values():
            w.close()

    labels = {"report": "report's loop (SeedCNN)", "labkit": "labkit (SeedCNN)",
              "improved": f"labkit (improved, {results.get('improved', [{}])[-1].get('precision', '?')})"}
    print(f"\n{'contender':<26} {'s/epoch median':>15} {'min-max':>13} {'samples/s':>10} {'peak RSS':>9}")
    med = {}
    for k in kinds:
        secs = [x["seconds"] for x in results[k]]
        med[k] = statistics.median(secs)
        peak = max(x["peak_mb"] for x in results[k])
        print(f"{labels[k]:<26} {med[k]:>15.2f} {min(secs):>6.2f}-{max(secs):<6.2f} {N_TRAIN / med[k]:>10,.0f} {peak:>7,.0f} MB")
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(results["report"], results["labkit"])]
    print(f"\nspeed-up of labkit over the report's loop (SeedCNN, same epochs): median {statistics.median(ratios):.2f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}); target >= 3x")
    print(f"report protocol (10 runs x 50 epochs), training passes only: labkit ~{med['labkit'] * 500 / 60:.1f} min, "
          f"the report's loop ~{med['report'] * 500 / 60:.1f} min")
    if args.profile:
        profile_steps()
    if torch.cuda.is_available():
        gpu_protocol()


if __name__ == "__main__":
    main()
