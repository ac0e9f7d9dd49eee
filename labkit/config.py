"""Paths resolved from the package, and the one training config dataclass."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_ENV = "LABKIT_ROOT"  # the checkout to use when labkit is installed elsewhere (pip install ., a wheel)


def _is_checkout(folder: Path) -> bool:
    return (folder / "data" / "mnist").is_dir() and (folder / "notebooks").is_dir()


def _find_root() -> Path | None:
    """The labkit checkout: $LABKIT_ROOT, else the package's parent (an editable install), else the current
    folder or one above it; None when none of them is a checkout."""
    if os.environ.get(ROOT_ENV):
        root = Path(os.environ[ROOT_ENV]).expanduser().resolve()
        return root if _is_checkout(root) else None
    for folder in (PACKAGE_DIR.parent, *(lambda c: (c, *c.parents))(Path.cwd().resolve())):
        if _is_checkout(folder):
            return folder
    return None


_ROOT = _find_root()
PROJECT_ROOT = _ROOT if _ROOT is not None else PACKAGE_DIR.parent
DATA_DIR = PROJECT_ROOT / "data"
MNIST_DIR = DATA_DIR / "mnist"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "params"
CUSTOM_DIR = DATA_DIR / "custom"  # the synthetic custom digit set (notebook 04)
WEIGHTS_DIR = DATA_DIR / "weights"  # shipped, trained checkpoints with their provenance
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "improved.pt"  # the model predict/widgets use by default

class ProjectNotFound(RuntimeError):
    """labkit runs outside its checkout: no data/mnist, notebooks or params to use."""


def require_project() -> Path:
    """The checkout's root; ProjectNotFound in one line saying what to do when there is none."""
    if _ROOT is None:
        where = f"{ROOT_ENV}={os.environ[ROOT_ENV]} is not" if os.environ.get(ROOT_ENV) else \
            f"neither {PACKAGE_DIR.parent} nor the current folder is"
        raise ProjectNotFound(f"{where} a labkit checkout (data/mnist/, notebooks/): install with "
                              f"`pip install -e .` inside the checkout, or set {ROOT_ENV}=/path/to/the/checkout")
    return _ROOT


def display_path(path) -> str:
    """A path relative to the project when it lies inside it (no machine paths in outputs)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT))
    except (ValueError, OSError):
        return str(p)


# The allowed values of TrainConfig's choice fields, declared once (the CLI's choices come from here).
# "baseline": the report's Net; "improved": labkit's CNN; then ablation variants (notebook 06): the report's
# Net with ReLUs, with BatchNorm too, and the improved CNN with residual connections; then the peers, the
# networks people run instead (benchmarks/NOTES.md, "Peers"): pytorch/examples' mnist/main.py Net, the Keras
# "Simple MNIST convnet", and Chris Deotte's CNN (github.com/cdeotte/MNIST-CNN-99.75)
MODEL_NAMES = ("baseline", "improved", "baseline_relu", "baseline_bn", "residual", "examples", "keras", "deotte")
PRECISIONS = ("fp32", "bf16", "auto")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("constant", "onecycle", "step")  # step: the lr times lr_gamma after every epoch
OPTIMIZERS = ("sgd", "adadelta", "adam")
# Networks that scale raw 0-255 pixels to [0, 1] themselves, as their Keras sources do before fitting: they take
# the raw pixels (normalize=False), and every path that feeds a model (training, evaluation, predict) stays as it is
SELF_SCALING_MODELS = ("keras", "deotte")
N_TRAIN = 60_000  # MNIST training images
FLOAT32_MAX = 3.4028234663852886e38  # hyperparameters become float32 in the optimiser
AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation generator's seed is the run's seed + this
MAX_SEED = 2**63 - 1 - AUGMENT_SEED_OFFSET  # torch seeds are 64-bit; the augmentation seed must fit too
PREPROCESSING = ("mnist", "report")  # how a picture becomes a 28x28: MNIST-style (default) or the report's readImage
OLD_MODEL_NAMES = {"seed": "baseline"}  # aliases saved files may carry, read as the current name


class ConfigError(ValueError):
    """A TrainConfig field holds a value it cannot take."""


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a training run; defaults are the report's recipe."""

    model: str = "baseline"  # one of MODEL_NAMES: "baseline" (the report's Net), "improved", a variant or a peer
    epochs: int = 50  # passes over the training set; the report used 50
    batch_size: int = 128  # the report's BATCH_SIZE
    optimizer: str = "sgd"  # one of OPTIMIZERS: "sgd" (the report), "adadelta" or "adam"
    lr: float = 1e-4  # peak learning rate; the report's SGD used 1e-4
    momentum: float = 0.9  # SGD momentum, as in the report; Adam's beta1 and Adadelta's rho (each a running average's decay, 0.9 in every source)
    nesterov: bool = False  # Nesterov momentum (the report: plain); SGD only
    weight_decay: float = 0.0  # L2 on weights (the report: none)
    schedule: str = "constant"  # one of SCHEDULES: "constant" (the report), "onecycle" or "step"
    min_peak_steps: int = 120  # one-cycle: a run of fewer steps scales its peak lr by steps / min_peak_steps (24 steps at lr 0.1 diverge)
    lr_gamma: float = 1.0  # step schedule: the lr's factor after each epoch, 0 < lr_gamma <= 1 (torch's StepLR gamma)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (the report: none)
    normalize: bool = False  # False: raw 0-255 pixels as the report fed them; True: MNIST mean/std
    augment: bool = False  # random affine jitter of training digits (the report: none)
    augment_degrees: float = 10.0  # augmentation: rotation uniform in +-this many degrees
    augment_scale: float = 0.1  # augmentation: scale uniform in 1 +- this
    augment_shift: float = 2.0  # augmentation: shift uniform in +- this many pixels, each axis
    holdout: float = 0.0  # fraction of the training images held out, the last ones, as Keras' validation_split: not trained on, evaluated each epoch (0: none)
    seed: int = 1  # torch.manual_seed of the run; the report used 1
    limit_train: int | None = None  # train on the first N training images only (None: all 60,000)
    eval_batch: int = 1000  # test-set chunk size; chunks of 1000 beat one 10k batch on CPU
    precision: str = "fp32"  # training arithmetic: "fp32" (the report), "bf16" autocast, or "auto": bf16 where the hardware has it (CUDA, CPUs with AMX), else fp32; evaluation is always fp32
    device: str = "auto"  # one of DEVICES: "auto" (CUDA when present), "cpu" or "cuda"

    def __post_init__(self):
        """Refuse values no run can use, with one line saying which and why."""
        for name, allowed in (("model", MODEL_NAMES), ("precision", PRECISIONS), ("device", DEVICES),
                              ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch", "min_peak_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")
        if self.limit_train is not None and (isinstance(self.limit_train, bool) or not isinstance(self.limit_train, int)
                                             or not 1 <= self.limit_train <= N_TRAIN):
            raise ConfigError(f"limit_train must be None or 1..{N_TRAIN:,}, not {self.limit_train!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be a whole number in 0..{MAX_SEED}, not {self.seed!r}")
        for name in ("lr", "weight_decay", "momentum", "label_smoothing", "lr_gamma", "augment_degrees",
                     "augment_scale", "augment_shift", "holdout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, not {value!r}")
        if self.lr > FLOAT32_MAX:  # the optimiser computes in float32: a larger lr is infinite there
            raise ConfigError(f"lr must be at most {FLOAT32_MAX:.4g} (the largest float32), not {self.lr!r}")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0, 0 <= label_smoothing < 1 "
                              f"(got lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                              f"label_smoothing={self.label_smoothing})")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], the lr's factor after each epoch, not {self.lr_gamma!r}")
        if not (0 <= self.augment_degrees <= 180 and 0 <= self.augment_scale < 1 and 0 <= self.augment_shift < 28):
            raise ConfigError(f"need 0 <= augment_degrees <= 180, 0 <= augment_scale < 1, 0 <= augment_shift < 28 "
                              f"(got augment_degrees={self.augment_degrees}, augment_scale={self.augment_scale}, "
                              f"augment_shift={self.augment_shift})")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be a fraction in [0, 1) of the training images, not {self.holdout!r}")
        holdout_split(self.limit_train or N_TRAIN, self.holdout)  # both parts of the training set not empty
        if self.model in SELF_SCALING_MODELS and self.normalize:
            raise ConfigError(f"normalize must be False for model {self.model!r}: it scales raw 0-255 pixels to "
                              f"[0, 1] itself, as its Keras source does")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def holdout_split(n: int, holdout: float) -> int:
    """How many of n training images are trained on when the last `holdout` fraction is held out: the first
    floor(n * (1 - holdout)), as Keras' validation_split; ConfigError when either part would be empty."""
    trained = math.floor(n * (1 - holdout))
    if trained < 1 or (holdout > 0 and trained == n):
        raise ConfigError(f"holdout {holdout} of {n:,} training image(s) leaves "
                          f"{'none to train on' if trained < 1 else 'none held out'}")
    return trained


def comparable(config: dict, ignore=("seed", "device")) -> dict:
    """A saved config as a dict to compare runs by: fields missing from the file take their defaults,
    model aliases (OLD_MODEL_NAMES) their current names, and the fields in `ignore` are left out."""
    config = {**TrainConfig().to_dict(), **config}
    config["model"] = OLD_MODEL_NAMES.get(config["model"], config["model"])
    return {k: v for k, v in config.items() if k not in ignore}


def differing_fields(a: dict, b: dict, ignore=("seed", "device")) -> list[str]:
    """The fields in which two configs (as comparable() sees them) differ."""
    a, b = comparable(a, ignore), comparable(b, ignore)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
