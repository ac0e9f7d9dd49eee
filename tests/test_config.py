"""labkit.config (TrainConfig, recipes, allowed values) and labkit.device (device and precision)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from labkit.config import DEVICES, MODEL_NAMES, PRECISIONS, SCHEDULES, ConfigError, TrainConfig
from labkit.recipes import RECIPES, recipe
from labkit.device import DeviceError, resolve_device, resolve_precision
from labkit.models import MODELS


def test_defaults_are_the_reports_recipe():
    cfg = TrainConfig()
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.seed) == ("baseline", 50, 128, 1e-4, 0.9, 1)
    assert (cfg.normalize, cfg.augment, cfg.schedule, cfg.precision) == (False, False, "constant", "fp32")


def test_every_model_has_a_recipe_and_a_class():
    assert set(RECIPES) - {"best"} == set(MODEL_NAMES) == set(MODELS)  # "best": the improved CNN's second recipe
    for name in MODEL_NAMES:
        assert recipe(name).model == name


def test_recipe_overrides_ignore_none_and_keep_the_rest():
    cfg = recipe("improved", epochs=2, limit_train=None, lr=0.05)
    assert (cfg.epochs, cfg.lr, cfg.limit_train, cfg.schedule) == (2, 0.05, None, "onecycle")
    assert cfg.replace(seed=3).seed == 3 and cfg.seed == 1
    assert cfg.to_dict() == dataclasses.asdict(cfg)


@pytest.mark.parametrize("field, value, message", [
    ("model", "seed", "model must be one of baseline, improved"),
    ("precision", "fp16", "precision must be one of"),
    ("device", "tpu", "device must be one of"),
    ("schedule", "cosine", "schedule must be one of"),
    ("epochs", 0, "epochs must be a whole number >= 1"),
    ("epochs", 2.5, "epochs must be a whole number >= 1"),
    ("batch_size", True, "batch_size must be a whole number >= 1"),
    ("limit_train", 0, "limit_train must be None or 1..60,000"),
    ("limit_train", 60_001, "limit_train must be None or 1..60,000"),
    ("lr", 0.0, "need lr > 0"),
    ("momentum", 1.0, "0 <= momentum < 1"),
])
def test_bad_values_are_refused_in_one_line(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        TrainConfig(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", ["lr", "weight_decay", "momentum", "label_smoothing"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value})
    assert str(err.value) == f"{field} must be a finite number, not {value!r}"


def test_seed_must_fit_torch_with_the_augmentation_offset():
    from labkit.config import AUGMENT_SEED_OFFSET, MAX_SEED

    assert MAX_SEED + AUGMENT_SEED_OFFSET == 2**63 - 1  # torch.Generator.manual_seed takes int64 without wrapping
    for seed in (0, MAX_SEED):
        assert TrainConfig(seed=seed).seed == seed
    torch.Generator().manual_seed(MAX_SEED + AUGMENT_SEED_OFFSET)
    for seed in (-1, MAX_SEED + 1, 99999999999999999999999, True, 1.0):
        with pytest.raises(ConfigError, match=f"seed must be a whole number in 0..{MAX_SEED}, not"):
            TrainConfig(seed=seed)


def test_choice_lists_are_the_ones_the_cli_offers():
    from labkit.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: tuple(a.choices) for a in train._actions if a.choices}
    from labkit.recipes import RECIPE_NAMES

    assert choices == {"model": RECIPE_NAMES, "device": DEVICES, "precision": PRECISIONS}
    assert SCHEDULES == ("constant", "onecycle", "step")


def test_resolve_device_and_precision():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch sees no CUDA device"):
            resolve_device("cuda")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu, "baseline") == "fp32"
    assert resolve_precision("auto", cpu, "improved") == ("bf16" if torch.cpu._is_amx_tile_supported() else "fp32")
    with pytest.raises(DeviceError, match="precision must be one of"):
        resolve_precision("fp16", cpu)


def _installed_copy(tmp_path):
    """The package alone in a site folder, as `pip install .` or a wheel leaves it: no data/ beside it."""
    import shutil

    from labkit.config import PACKAGE_DIR

    site = tmp_path / "site"
    shutil.copytree(PACKAGE_DIR, site / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _labkit(site, *args, cwd, env_extra=()):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LABKIT_ROOT"} | {"PYTHONPATH": str(site), **dict(env_extra)}
    return subprocess.run([sys.executable, "-m", "labkit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_non_editable_install_outside_the_checkout_says_what_to_do(tmp_path):
    site = _installed_copy(tmp_path)
    proc = _labkit(site, "predict", "x.png", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is a labkit checkout" in proc.stderr and "LABKIT_ROOT" in proc.stderr and "pip install -e ." in proc.stderr
    proc = _labkit(site, "predict", "x.png", cwd=tmp_path, env_extra={"LABKIT_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and f"LABKIT_ROOT={tmp_path} is not a labkit checkout" in proc.stderr, proc.stderr


def test_a_non_editable_install_finds_the_checkout_from_labkit_root_or_the_current_folder(tmp_path):
    from labkit.config import CUSTOM_DIR, PROJECT_ROOT

    site = _installed_copy(tmp_path)
    image = sorted(CUSTOM_DIR.glob("*.png"))[0]
    for cwd, extra in ((tmp_path, {"LABKIT_ROOT": str(PROJECT_ROOT)}), (PROJECT_ROOT / "notebooks", {})):
        proc = _labkit(site, "predict", "--json", str(image), cwd=cwd, env_extra=extra)
        assert proc.returncode == 0, proc.stderr
        assert '"digit"' in proc.stdout


def test_a_learning_rate_beyond_float32_is_refused():
    with pytest.raises(ConfigError, match="at most 3.403e\\+38"):
        recipe("baseline", lr=1e39)
    assert recipe("baseline", lr=1e38).lr == 1e38


def test_the_ladder_climbs_from_the_report_to_the_improved_recipe_one_change_per_rung():
    from labkit.recipes import LADDER, LADDER_BRANCHES, ladder

    rungs = ladder()
    assert list(rungs) == [name for name, *_ in LADDER] + [name for name, *_ in LADDER_BRANCHES]
    assert rungs["report"] == recipe("baseline", epochs=5, precision="fp32")
    assert rungs["augmentation"] == recipe("improved", precision="fp32")  # the top rung is the improved recipe
    assert rungs["residual"] == recipe("residual", precision="fp32")
    assert rungs["residual_no_augmentation"] == recipe("residual", precision="fp32", augment=False)
    names = [name for name, *_ in LADDER]
    for (name, _what, changes), before in zip(LADDER[1:], names):  # each rung changes only the fields it names
        differ = {k for k, v in rungs[name].to_dict().items() if rungs[before].to_dict()[k] != v}
        assert differ and differ <= set(changes), (name, differ)
    assert len({cfg.epochs for cfg in rungs.values()}) == 1 and all(c.precision == "fp32" for c in rungs.values())


def test_the_best_recipe_is_the_improved_recipe_for_twenty_epochs():
    from labkit.recipes import RECIPE_NAMES

    best = recipe("best")
    assert best == recipe("improved", epochs=20) and best.model == "improved"
    assert set(RECIPE_NAMES) == set(RECIPES) and RECIPE_NAMES == (*MODEL_NAMES, "best")
    assert "best" not in MODEL_NAMES  # a recipe of the improved CNN, not a network
    assert recipe("best", epochs=3).epochs == 3


def test_the_frontier_trains_every_recipe_at_one_precision_with_its_own_seeds():
    from labkit.recipes import FRONTIER, frontier
    from labkit.grid import parse_seeds

    points = frontier()
    assert [name for name, *_ in points] == [name for name, *_ in FRONTIER]
    budgets = sorted(c.epochs for name, c, _ in points if name.startswith("improved-"))
    assert budgets == [1, 2, 3, 5, 8, 15]  # the budgets the frontier must show, and the best recipe beside them
    by_name = {name: (c, parse_seeds(s)) for name, c, s in points}
    for peer in ("examples", "keras", "deotte"):
        assert by_name[peer][0] == recipe(peer, precision="auto") and len(by_name[peer][1]) >= 3
    for name in ("best", *(f"improved-e{e}" for e in budgets)):
        assert len(by_name[name][1]) == 10 and by_name[name][0].model == "improved"
    assert by_name["best"][0] == recipe("best")
    assert {c.precision for _, c, _ in points} == {"auto"}
    assert all(c.limit_train == 500 and c.device == "cpu" for _, c, _ in frontier(limit_train=500, device="cpu"))
