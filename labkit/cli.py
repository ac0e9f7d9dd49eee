"""`labkit train / predict / run-notebooks / sweep`: argparse, thin over the package."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from .config import DEVICES, MODEL_NAMES, N_TRAIN, OUTPUTS_DIR, PRECISIONS, PREPROCESSING, REPORT_TABLE, ConfigError, recipe


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: a whole number in lo..hi, else argparse's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} must be >= {lo}" if hi is None else f"{value} is outside {lo}..{hi}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _fail(command: str, message) -> int:
    print(f"labkit {command}: error: {message}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from .data import DataError
    from .device import DeviceError, resolve_device
    from .stats import format_table
    from .train import RunsFolderError, check_out_dir, train_runs

    try:
        cfg = recipe(args.model, epochs=args.epochs, seed=args.seed, limit_train=args.limit_train,
                     device=args.device, precision=args.precision, lr=args.lr, batch_size=args.batch_size,
                     momentum=args.momentum, weight_decay=args.weight_decay)
        resolve_device(cfg.device)
        out = check_out_dir(args.out) if args.out else OUTPUTS_DIR / f"train-{args.model}-{_stamp()}"
    except (ConfigError, DeviceError, RunsFolderError) as e:
        return _fail("train", e)
    print(f"training {args.runs} run(s) of {args.model!r}: {cfg}", flush=True)
    try:
        metrics = train_runs(cfg, args.runs, out_dir=out, resume=not args.no_resume)
    except (DataError, RunsFolderError) as e:
        return _fail("train", e)
    print(format_table(metrics, REPORT_TABLE if args.model == "baseline" else None))
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_predict(args) -> int:
    from .predict import run_cli

    return run_cli(args.images, args.checkpoint, args.preprocess, args.json)


def cmd_run_notebooks(args) -> int:
    from .notebooks_runner import ParamsError, run_notebooks

    out = Path(args.out) if args.out else OUTPUTS_DIR / f"notebooks-{_stamp()}"
    try:
        return run_notebooks(params_file=args.file, out_dir=out, only=args.only)
    except ParamsError as e:
        return _fail("run-notebooks", e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="MNIST CNN workbook: train, predict, run the notebooks.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train R runs of a model and write metrics.json")
    t.add_argument("--model", required=True, choices=MODEL_NAMES, help="baseline: the report's network")
    t.add_argument("--epochs", type=int_in(1), help="default: the model's full recipe (baseline: 50)")
    t.add_argument("--runs", type=int_in(1), default=1, help="independent runs, seeds S, S+1, ... (default 1)")
    t.add_argument("--seed", type=int, help="random seed of the first run (default: the recipe's, 1)")
    t.add_argument("--limit-train", type=int_in(1, N_TRAIN), help=f"train on the first N (1..{N_TRAIN}) training images only")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (default: the recipe's)")
    t.add_argument("--batch-size", type=int_in(1), help="default: the recipe's, 128")
    t.add_argument("--momentum", type=float, help="SGD momentum (default: the recipe's)")
    t.add_argument("--weight-decay", type=float, help="L2 on weights (default: the recipe's)")
    t.add_argument("--out", help="output folder (default outputs/train-MODEL-TIMESTAMP)")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--precision", choices=PRECISIONS, help="training arithmetic (default: the recipe's; evaluation is always fp32)")
    t.add_argument("--no-resume", action="store_true", help="retrain runs already finished in --out")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict the digit in image files")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--checkpoint", help="a checkpoint from labkit train (default: the shipped model)")
    pr.add_argument("--preprocess", default="mnist", choices=PREPROCESSING, help="mnist: MNIST-style (default); report: the report's readImage")
    pr.add_argument("--json", action="store_true", help="one JSON object per line")
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("run-notebooks", help="execute the notebooks with papermill into a folder (HTML beside)")
    r.add_argument("-f", "--file", help="parameters YAML (e.g. params/quick.yaml; default: params/full.yaml)")
    r.add_argument("--out", help="output folder (default outputs/notebooks-TIMESTAMP)")
    r.add_argument("--only", nargs="*", help="notebook names to run (default: all, in order)")
    r.set_defaults(func=cmd_run_notebooks)

    from . import sweep  # imports Ray only when a sweep runs

    sweep.register(sub)
    return p


def main(argv=None) -> int:
    """The `labkit` command. Output never stops the work: text the terminal's encoding lacks is
    replaced, a reader that goes away (`| head -n1`) only ends the printing, warnings are one line."""
    import warnings

    from .progress import PipeSafe

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    saved = sys.stdout, sys.stderr, warnings.formatwarning
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)
    command = ""  # the subcommand, once parsed

    def one_line(message, *_args, **_kwargs) -> str:
        return f"labkit{' ' + command if command else ''}: warning: {message}\n"

    warnings.formatwarning = one_line
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished epochs, runs and notebooks stay on disk", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only or unwritable folder: one line, not a traceback
        from .records import WriteError
        from .safeio import WRITE_PROBLEMS

        if isinstance(e, WriteError):
            return _fail(command, e)
        import errno

        if e.errno in WRITE_PROBLEMS and e.errno not in (errno.ENOENT, errno.EISDIR) and e.filename is not None:
            return _fail(command, f"{e.filename}: {WRITE_PROBLEMS[e.errno]}")  # the disk or its permissions
        raise  # anything else is labkit's defect: its traceback is wanted
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr, warnings.formatwarning = saved
