"""`labkit train / predict / run-notebooks / sweep`: argparse, thin over the package."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import PROJECT_ROOT, DEVICES, MODEL_NAMES, N_TRAIN, PRECISIONS, PREPROCESSING, ConfigError
from .recipes import RECIPE_NAMES, REPORT_TABLE, recipe


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
    from .records import WriteError
    from .runfolder import RunFolder, RunFolderError, fresh_dir
    from .stats import format_table
    from .train import train_runs

    try:
        cfg = recipe(args.model, epochs=args.epochs, seed=args.seed, limit_train=args.limit_train,
                     device=args.device, precision=args.precision, lr=args.lr, batch_size=args.batch_size,
                     momentum=args.momentum, weight_decay=args.weight_decay)
        resolve_device(cfg.device)
    except (ConfigError, DeviceError) as e:
        return _fail("train", e)
    out = Path(args.out) if args.out else fresh_dir(f"train-{args.model}")
    print(f"training {args.runs} run(s) of {args.model!r}: {cfg}", flush=True)
    try:
        metrics = train_runs(cfg, args.runs, out_dir=out, resume=not args.no_resume, wait=args.wait,
                             move_aside=args.move_aside)
    except (ConfigError, DataError, RunFolderError, WriteError) as e:
        return _fail("train", e)
    print(format_table(metrics, REPORT_TABLE if args.model == "baseline" else None))
    print(f"metrics: {RunFolder(out).metrics_path}")
    return 0


def cmd_predict(args) -> int:
    from .predict import run_cli

    return run_cli(args.images, args.checkpoint, args.preprocessing, args.json)


def cmd_run_notebooks(args) -> int:
    from .notebooks_runner import ParamsError, run_notebooks

    from .runfolder import fresh_dir

    out = Path(args.out) if args.out else fresh_dir("notebooks")
    try:
        return run_notebooks(params_file=args.file, out_dir=out, only=args.only)
    except ParamsError as e:
        return _fail("run-notebooks", e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="MNIST CNN workbook: train, predict, run the notebooks.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train R runs of a model and write metrics.json")
    t.add_argument("--model", required=True, choices=RECIPE_NAMES,
                   help="baseline: the report's network; best: the improved CNN's accurate recipe")
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
    t.add_argument("--no-resume", action="store_true",
                   help="retrain runs already finished in --out (they move to --out/replaced-TIMESTAMP/)")
    t.add_argument("--move-aside", action="store_true",
                   help="with --no-resume: also move aside runs of another config found in --out")
    t.add_argument("--wait", action="store_true", help="wait for another process writing --out instead of stopping")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict the digit in image files")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--checkpoint", help="a checkpoint from labkit train (default: the shipped model)")
    pr.add_argument("--preprocessing", "--preprocess", default="mnist", choices=PREPROCESSING,
                    help="mnist: MNIST-style (default); report: the report's readImage")
    pr.add_argument("--json", action="store_true", help="one JSON object per line")
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("run-notebooks", help="execute the notebooks with papermill into a folder (HTML beside)")
    r.add_argument("-f", "--file", help="parameters YAML (e.g. params/quick.yaml; default: params/full.yaml)")
    r.add_argument("--out", help="output folder (default outputs/notebooks-TIMESTAMP)")
    r.add_argument("--only", nargs="*", help="notebook names to run (default: all, in order)")
    r.set_defaults(func=cmd_run_notebooks)

    _add_sweep(sub)

    sh = sub.add_parser("ship", help="ship a finished `labkit train --runs N --out SRC` folder into data/runs/NAME, "
                                     "or a finished `labkit sweep --out SRC` into data/sweeps/NAME")
    sh.add_argument("src", help="the run folder, or the sweep's folder (it holds sweep.json)")
    sh.add_argument("name", help="the name in data/runs/ or data/sweeps/ (e.g. baseline-e50-fp32, ladder-e5)")
    sh.add_argument("--point", metavar="FIELD=VALUE",
                    help="ship one point of the sweep SRC (e.g. recipe=best) into data/runs/NAME as one protocol")
    sh.set_defaults(func=cmd_ship)

    rd = sub.add_parser("readme", help="rewrite the README's results table from data/runs/results.json")
    rd.set_defaults(func=cmd_readme)
    return p


def cmd_ship(args) -> int:
    from .records import MetricsError
    from .safeio import ReadRefused
    from .shipped import ResultsError, ship, ship_point, ship_sweep
    from .sweep import SWEEP_JSON

    is_sweep = (Path(args.src) / SWEEP_JSON).exists()
    if args.point and not is_sweep:
        return _fail("ship", f"--point picks a point of a sweep: {args.src} holds no {SWEEP_JSON}")
    try:
        if args.point:
            print(ship_point(args.src, args.point, args.name))
        else:
            print(ship_sweep(args.src, args.name) if is_sweep else ship(args.src, args.name))
    except (ResultsError, MetricsError, ReadRefused) as e:
        return _fail("ship", e)
    return 0


README = PROJECT_ROOT / "README.md"
_BEGIN, _END = "<!-- results table: labkit readme -->", "<!-- end of results table -->"


def cmd_readme(args) -> int:
    """Replace the README's results table with one made from results.json."""
    from .shipped import readme_table

    text = README.read_text(encoding="utf-8")
    if _BEGIN not in text or _END not in text:
        return _fail("readme", f"{README}: no results table markers ({_BEGIN} ... {_END})")
    start, end = text.index(_BEGIN), text.index(_END) + len(_END)
    README.write_text(text[:start] + "\n".join([_BEGIN, readme_table(), _END]) + text[end:], encoding="utf-8")
    print(f"rewrote the results table in {README.name}")
    return 0


def _add_sweep(subparsers) -> None:
    """`labkit sweep` (Ray is imported only when a sweep runs)."""
    from .grid import DEFAULT_CPUS_PER_TRIAL, DEFAULT_GPUS_PER_TRIAL

    s = subparsers.add_parser("sweep", help="train a grid of configs x seeds on Ray Tune and write sweep.json")
    s.add_argument("--model", choices=MODEL_NAMES, help="the recipe the grid varies (required without --ladder)")
    s.add_argument("--ladder", action="store_true",
                   help="train the ablation ladder (labkit.recipes.LADDER): each rung a point, --seeds each")
    s.add_argument("--frontier", action="store_true",
                   help="train the frontier (labkit.recipes.FRONTIER): every recipe a point, each with its own seeds")
    s.add_argument("--only", help="with --frontier: some points only, e.g. improved-e1,keras")
    s.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a TrainConfig field and its values, e.g. lr=1e-5,1e-4,1e-3; repeat for a product of fields")
    s.add_argument("--seeds", help="random seeds of each grid point, e.g. 1-3 or 1,5,9 (default 1; --frontier: "
                                    "each point's own)")
    s.add_argument("--epochs", type=int_in(1), help="default: the model's recipe (baseline: 50)")
    s.add_argument("--limit-train", type=int_in(1, N_TRAIN), help="train on the first N training images only")
    s.add_argument("--out", help="output folder (default outputs/sweeps/MODEL-TIMESTAMP-PID); the same --out resumes")
    s.add_argument("--address", help="HOST:PORT of a running Ray cluster (default: a Ray instance on this machine)")
    s.add_argument("--cpus-per-trial", type=int_in(1),
                   help=f"CPUs and torch threads per trial (default {DEFAULT_CPUS_PER_TRIAL}, the fastest measured here)")
    s.add_argument("--gpus-per-trial", type=float,
                   help=f"GPUs per trial; fractions share a GPU (default {DEFAULT_GPUS_PER_TRIAL} where the cluster has GPUs)")
    s.add_argument("--max-failures", type=int_in(0), default=2, help="retries of a failed trial (default 2)")
    s.add_argument("--device", choices=DEVICES, help="default auto: the trial's GPU when it has one")
    s.add_argument("--precision", choices=PRECISIONS, help="default: the recipe's")
    s.add_argument("--no-resume", action="store_true", help="retrain trials already finished in --out")
    s.add_argument("--wait", action="store_true", help="wait for another sweep writing --out instead of stopping")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    """`labkit sweep`: 0 when every trial finished, 1 when some failed, 2 for bad arguments, 130 when stopped."""
    from .data import DataError
    from .records import WriteError
    from .grid import SweepError
    from .sweep import run, run_frontier, run_ladder

    common = dict(epochs=args.epochs, limit_train=args.limit_train, out_dir=args.out, address=args.address,
                  cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                  max_failures=args.max_failures, resume=not args.no_resume, device=args.device, wait=args.wait)
    named = [flag for flag in ("ladder", "frontier") if getattr(args, flag)]
    if len(named) > 1:
        return _fail("sweep", "give one of --ladder and --frontier")
    if named and (args.model or args.grid or args.precision or (args.frontier and args.epochs)):
        return _fail("sweep", f"--{named[0]} sets every point's model, fields and precision: leave out --model, "
                              f"--grid, --precision{', --epochs' if args.frontier else ''}")
    if args.only and not args.frontier:
        return _fail("sweep", "--only picks points of --frontier")
    if not named and not args.model:
        return _fail("sweep", "give --model (the recipe the grid varies), --ladder or --frontier")
    try:
        if args.ladder:
            sweep = run_ladder(args.seeds or "1", **common)
        elif args.frontier:
            common.pop("epochs")
            only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
            sweep = run_frontier(args.seeds, only, **common)
        else:
            sweep = run(args.model, args.grid, args.seeds or "1", precision=args.precision, **common)
    except (SweepError, DataError, WriteError) as e:
        return _fail("sweep", e)
    except KeyboardInterrupt as e:
        print(f"labkit sweep: {e or 'interrupted; finished trials stay on disk, the same command resumes'}",
              file=sys.stderr)
        return 130
    if sweep["failed"]:
        print(f"labkit sweep: {len(sweep['failed'])} trial(s) failed after {args.max_failures} retries: "
              f"{', '.join(sweep['failed'])}", file=sys.stderr)
        return 1
    return 0


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
        from .config import ProjectNotFound, require_project

        try:
            require_project()
        except ProjectNotFound as e:
            return _fail(command, e)
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
