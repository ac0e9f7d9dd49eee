"""What labkit trains and compares against: every recipe, the ablation ladder, the frontier and the
published figures, each a named set of changes to TrainConfig (with its seeds, where a study has them)."""
from __future__ import annotations

from .config import MODEL_NAMES, ConfigError, TrainConfig

# The report's published ten-run table (best, worst, mean, std), for comparison everywhere.
REPORT_TABLE = {
    "train": {"best": 0.8996, "worst": 0.8979, "mean": 0.89885, "std": 0.000583571380000371},
    "test": {"best": 0.9083, "worst": 0.9054, "mean": 0.90715, "std": 0.000936008072139943},
}


# Each model's full recipe: only what differs from the report's defaults.
RECIPES: dict[str, dict] = {
    "baseline": {},
    "baseline_relu": {"model": "baseline_relu"},
    "baseline_bn": {"model": "baseline_bn"},
    "improved": dict(
        model="improved", epochs=5, batch_size=128, lr=0.2, momentum=0.9, nesterov=True,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, normalize=True, augment=True,
        min_peak_steps=240,  # twice the default for twice the peak lr: short runs keep the peak that works for them
        precision="auto",  # bf16 on AMX CPUs and GPUs; fp32 elsewhere, where 5 epochs cost ~14 of the report's (NOTES)
    ),
}
RECIPES["residual"] = {**RECIPES["improved"], "model": "residual"}  # the improved recipe, residual connections
# The peers, each with its source's own recipe (benchmarks/NOTES.md, "Peers", says what differs in labkit's version).
# pytorch/examples mnist/main.py: Adadelta lr 1.0 (rho 0.9: the default momentum), the lr times 0.7 after each
# epoch, batch 64, 14 epochs, inputs normalised with (0.1307, 0.3081)
RECIPES["examples"] = dict(model="examples", optimizer="adadelta", lr=1.0, schedule="step", lr_gamma=0.7,
                           batch_size=64, epochs=14, normalize=True)
# keras-io examples/vision/mnist_convnet.py: Adam lr 1e-3 (beta1 0.9: the default momentum), batch 128, 15 epochs,
# [0, 1] pixels, validation_split=0.1 (the last 6,000 training images not trained on)
RECIPES["keras"] = dict(model="keras", optimizer="adam", lr=1e-3, batch_size=128, epochs=15, holdout=0.1)
# cdeotte/MNIST-CNN-99.75 CNN.ipynb, the code of the published 1,500-CNN mean (99.641 %): Adam lr 1e-3 times 0.95
# after each epoch, batch 64, 30 epochs, [0, 1] pixels, rotation 15 degrees, zoom 0.15, shifts of 0.1 of the width
# (2.8 pixels), 10 % of the training images held out
RECIPES["deotte"] = dict(model="deotte", optimizer="adam", lr=1e-3, schedule="step", lr_gamma=0.95,
                         batch_size=64, epochs=30, augment=True, augment_degrees=15.0, augment_scale=0.15,
                         augment_shift=2.8, holdout=0.1)
# The accurate recipe beside the fast one: the improved CNN and recipe for 20 epochs (notebook 07, the frontier)
RECIPES["best"] = {**RECIPES["improved"], "epochs": 20}
RECIPE_NAMES = (*MODEL_NAMES, "best")  # what `labkit train --model` takes: every model's recipe, and "best" (the improved CNN's)

# The frontier (notebook 07): test accuracy against seconds per run, every recipe trained on one machine by one
# command, `labkit sweep --frontier` (data/sweeps/README.md). Seeds: ten for labkit's points, three for each peer
# (every peer's run costs over 2 minutes on 2 cores). Precision "auto" for every point: bf16 where the hardware
# has it (AMX CPUs, GPUs), else fp32, so that the recipes, not the arithmetic, differ.
FRONTIER_PRECISION = "auto"
FRONTIER = (  # (point, recipe, fields it changes, seeds); longest runs first, so that two cores finish together
    ("deotte", "deotte", {}, "1-3"),
    ("examples", "examples", {}, "1-3"),
    ("best", "best", {}, "1-10"),
    ("keras", "keras", {}, "1-3"),
    *((f"improved-e{e}", "improved", {"epochs": e}, "1-10") for e in (15, 8, 5, 3, 2, 1)),
)


# The ablation ladder (notebook 06): from the report's recipe to the improved one, one change per rung,
# each rung every change above it plus its own, all at the improved recipe's budget (5 epochs) in fp32.
# `labkit sweep --ladder --seeds 1-10` trains it. The two learning rates are chosen by the lowest mean
# final *training* loss (never the test set) over seeds 1-3 of a grid (data/sweeps/README.md):
LADDER_LR_RAW = 3e-4  # the report's network on raw 0-255 pixels (data/sweeps/lr-baseline-e5)
LADDER_LR_NORMALIZED = 0.01  # the same network on normalised inputs (data/sweeps/lr-baseline-normalized-e5)
LADDER = (  # (rung, what it changes, the fields it sets)
    ("report", "the report's network and recipe: lr 1e-4 on raw 0-255 pixels, no activation", {}),
    ("lr", "a learning rate the report's network can use on raw pixels", {"lr": LADDER_LR_RAW}),
    ("normalize", "inputs normalised to MNIST's mean and std, with the learning rate that scale needs",
     {"normalize": True, "lr": LADDER_LR_NORMALIZED}),
    ("relu", "ReLU after the convolution and between the two linear layers", {"model": "baseline_relu"}),
    ("batchnorm", "BatchNorm after the convolution", {"model": "baseline_bn"}),
    ("architecture", "the improved CNN: a stride-2 5x5 stem, 64 and 128 channels, BatchNorm, global max pool",
     {"model": "improved"}),
    ("schedule", "one-cycle learning rate to 0.2, Nesterov momentum, weight decay 5e-4",
     {"schedule": "onecycle", "lr": 0.2, "nesterov": True, "weight_decay": 5e-4, "min_peak_steps": 240}),
    ("label_smoothing", "label smoothing 0.1", {"label_smoothing": 0.1}),
    ("augmentation", "random rotation, scale and shift of each training digit: the improved recipe", {"augment": True}),
    ("residual", "residual connections (a 1x1 projection shortcut beside each 3x3 layer)", {"model": "residual"}),
)
LADDER_BRANCHES = (  # (rung, what it changes, the rung it branches from, the fields it sets)
    ("residual_no_augmentation", "residual connections without augmentation", "label_smoothing", {"model": "residual"}),
)


def ladder(epochs: int | None = None, limit_train: int | None = None, device: str | None = None) -> dict[str, TrainConfig]:
    """{rung: TrainConfig} of the ablation ladder in order, branches last; epochs/limit_train/device override all."""
    common = {k: v for k, v in dict(epochs=epochs, limit_train=limit_train, device=device).items() if v is not None}
    fields, rungs = {"model": "baseline", "epochs": 5, "precision": "fp32", **common}, {}
    for name, _what, changes in LADDER:
        fields = {**fields, **changes}
        rungs[name] = TrainConfig(**fields)
    for name, _what, parent, changes in LADDER_BRANCHES:
        rungs[name] = rungs[parent].replace(**changes)
    return rungs

# Published figures the frontier marks as published (their own hardware and protocols, not measured here):
# (label, test accuracy, what it is, source)
PUBLISHED = (
    ("pytorch/examples mnist", 0.992, "~99.2 % after its 14 epochs, as usually quoted (its README states no figure)",
     "github.com/pytorch/examples/tree/main/mnist"),
    ("Keras simple convnet", 0.9922, "99.22 % test accuracy, as the example's page prints it",
     "keras.io/examples/vision/mnist_convnet"),
    ("Deotte, 1,500 runs", 0.99641, "mean of 1,500 single CNNs of 30 epochs (sd 0.047), on Tesla K80 GPUs",
     "github.com/cdeotte/MNIST-CNN-99.75"),
    ("tuomaso/train_mnist_fast", 0.9904, "mean of 30 seeds, one epoch, 0.76 s on a laptop GPU",
     "github.com/tuomaso/train_mnist_fast"),
)


def frontier(limit_train: int | None = None, device: str | None = None) -> list[tuple[str, TrainConfig, str]]:
    """(point, TrainConfig, seeds) of each frontier point in order; limit_train/device override all."""
    common = {k: v for k, v in dict(limit_train=limit_train, device=device).items() if v is not None}
    return [(name, recipe(name_of_recipe, precision=FRONTIER_PRECISION, **changes, **common), seeds)
            for name, name_of_recipe, changes, seeds in FRONTIER]


def recipe(model: str = "baseline", **overrides) -> TrainConfig:
    """The full recipe named `model` (a model's own, or "best"), with `overrides` (None values ignored) applied."""
    if model not in RECIPES:
        raise ConfigError(f"model must be one of {', '.join(RECIPE_NAMES)}, not {model!r}")
    fields = {"model": model, **RECIPES[model]}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**fields)
