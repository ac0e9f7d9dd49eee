"""`labkit train / predict / report`: argparse, thin over the package."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from .config import OUTPUTS_DIR, REPORT_TABLE, recipe


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def cmd_train(args) -> int:
    from .data import DataError
    from .train import format_table, train_runs

    cfg = recipe(args.model, epochs=args.epochs, seed=args.seed, limit_train=args.limit_train, device=args.device,
                 precision=args.precision)
    out = Path(args.out) if args.out else OUTPUTS_DIR / f"train-{args.model}-{_stamp()}"
    print(f"training {args.runs} run(s) of {args.model!r}: {cfg}\nwriting {out / 'metrics.json'}", flush=True)
    try:
        metrics = train_runs(cfg, args.runs, out_dir=out, resume=not args.no_resume)
    except DataError as e:
        print(f"labkit train: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics, REPORT_TABLE if args.model == "seed" else None))
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_predict(args) -> int:
    from .predict import run_cli

    return run_cli(args.images, args.checkpoint, args.preprocess, args.json)


def cmd_report(args) -> int:
    from .report import run_report

    out = Path(args.out) if args.out else OUTPUTS_DIR / f"report-{_stamp()}"
    return run_report(params_file=args.file, out_dir=out, only=args.only)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="labkit", description="MNIST CNN workbook: train, predict, report.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train R runs of a model and write metrics.json")
    t.add_argument("--model", required=True, choices=["seed", "improved"], help="seed: the report's CNN")
    t.add_argument("--epochs", type=int, help="default: the model's full recipe (seed: 50)")
    t.add_argument("--runs", type=int, default=1, help="independent runs, seeds S, S+1, ... (default 1)")
    t.add_argument("--seed", type=int, help="seed of the first run (default: the recipe's, 1)")
    t.add_argument("--limit-train", type=int, help="train on the first N training images only")
    t.add_argument("--out", help="output folder (default outputs/train-MODEL-TIMESTAMP)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="training arithmetic (default: the recipe's; evaluation is always fp32)")
    t.add_argument("--no-resume", action="store_true", help="retrain runs already finished in --out")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict the digit in image files")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--checkpoint", help="a checkpoint from labkit train (default: the shipped model)")
    pr.add_argument("--preprocess", default="mnist", choices=["mnist", "report"])
    pr.add_argument("--json", action="store_true", help="one JSON object per line")
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("report", help="execute the notebooks with papermill into a report folder")
    r.add_argument("-f", "--file", help="parameters YAML (e.g. params/quick.yaml; default: params/full.yaml)")
    r.add_argument("--out", help="output folder (default outputs/report-TIMESTAMP)")
    r.add_argument("--only", nargs="*", help="notebook names to run (default: all, in order)")
    r.set_defaults(func=cmd_report)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished runs and notebooks stay on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
