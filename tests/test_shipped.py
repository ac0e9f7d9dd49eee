"""labkit.shipped: the shipped runs match their manifest, shipped.json and the README quote them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from labkit import shipped
from labkit.data import load_mnist


def test_every_shipped_file_matches_the_manifest_and_all_fit_in_25_mb():
    listed = shipped.verify()
    assert {rel.split("/")[0] for rel in listed} == set(shipped.SHIPPED.values())
    for protocol in shipped.SHIPPED.values():
        assert {f"{protocol}/{f}" for f in ("metrics.json", "epochs.csv", shipped.PROBS)} <= set(listed)
    on_disk = [p for p in shipped.RUNS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in on_disk) <= 25 * 2**20


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "runs"
    shutil.copytree(shipped.RUNS_DIR, copy)
    monkeypatch.setattr(shipped, "RUNS_DIR", copy)
    monkeypatch.setattr(shipped, "MANIFEST", copy / "SHA256SUMS")
    protocol = shipped.SHIPPED["baseline"]
    text = (copy / protocol / "metrics.json").read_text()
    (copy / protocol / "metrics.json").write_text(text.replace('"test_acc": 0.9', '"test_acc": 0.8', 1))
    with pytest.raises(shipped.ResultsError, match="SHA-256 differs"):
        shipped.load(protocol)


@pytest.mark.parametrize("model", list(shipped.SHIPPED))
def test_recorded_accuracies_are_what_the_probabilities_give(model):
    """Each run's final test accuracy in metrics.json against its shipped test-set probabilities."""
    run = shipped.load(shipped.SHIPPED[model])
    y = load_mnist("test")[1]
    again = (run["probs"].argmax(2) == y).mean(1)
    recorded = np.array([r["epochs"][-1]["test_acc"] for r in run["metrics"]["runs"]])
    assert run["probs"].shape == (len(recorded), 10_000, 10) and len(recorded) == 10
    np.testing.assert_allclose(run["probs"].sum(2), 1, atol=1e-4)
    assert np.abs(again - recorded).max() <= 2 / 10_000
    assert all(len(r["epochs"]) == run["metrics"]["config"]["epochs"] for r in run["metrics"]["runs"])


def test_results_json_is_what_the_shipped_runs_give():
    y = load_mnist("test")[1]
    committed = shipped.read_results()
    for protocol in shipped.SHIPPED.values():
        assert json.loads(json.dumps(shipped.headline(protocol, y))) == committed[protocol], protocol


def test_readme_quotes_results_json():
    from labkit.cli import README

    assert shipped.readme_table() in README.read_text(encoding="utf-8"), "README is stale: run `labkit readme`"


@pytest.mark.parametrize("name", ["lr-baseline-e5", "lr-baseline-normalized-e5", "ladder-e5", "frontier"])
def test_shipped_sweeps_match_their_manifest_and_their_probabilities(name):
    from labkit.data import load_mnist

    got = shipped.load_sweep(name)
    sweep, probs = got["sweep"], got["probs"]
    y = load_mnist("test")[1]
    assert probs.shape == (len(sweep["trials"]), 10000, 10) and len(sweep["trials"]) == sweep["trials_requested"]
    for t, p in zip(sweep["trials"], probs):
        assert not t["dir"].startswith("/"), t["dir"]  # no machine paths shipped
        if t.get("diverged"):
            assert t["epochs"][-1]["test_loss"] is None
        else:  # the recorded final accuracy is what the saved probabilities give (float16: a few ties may flip)
            assert abs((p.argmax(1) == y).mean() - t["epochs"][-1]["test_acc"]) <= 3 / len(y), t["name"]


def test_the_ladders_learning_rates_are_the_lowest_training_loss_of_their_shipped_grids():
    from labkit.recipes import LADDER_LR_NORMALIZED, LADDER_LR_RAW
    from labkit.grid import point_rows

    for name, lr in (("lr-baseline-e5", LADDER_LR_RAW), ("lr-baseline-normalized-e5", LADDER_LR_NORMALIZED)):
        rows = [r for r in point_rows(shipped.load_sweep(name)["sweep"]) if r["n"]]
        assert min(rows, key=lambda r: r["train_loss_mean"])["lr"] == lr, name


def test_the_shipped_ladder_is_the_ladder_labkit_defines():
    from labkit.config import differing_fields
    from labkit.recipes import ladder

    sweep = shipped.load_sweep("ladder-e5")["sweep"]
    defined = ladder()
    assert sweep["grid"]["rung"] == list(defined) and sweep["seeds"] == list(range(1, 11))
    for t in sweep["trials"]:
        want = defined[t["point"]["rung"]].replace(seed=t["seed"]).to_dict()
        assert not differing_fields(t["config"], want, ignore=("device",)), t["name"]


def test_the_shipped_frontier_is_the_frontier_labkit_defines_and_best_ships_its_best_runs():
    from labkit.config import differing_fields
    from labkit.recipes import frontier
    from labkit.grid import parse_seeds

    sweep = shipped.load_sweep("frontier")["sweep"]
    defined = frontier()
    assert sweep["grid"]["recipe"] == [name for name, _, _ in defined]
    seeds = {name: parse_seeds(s) for name, _, s in defined}
    assert [t["name"] for t in sweep["trials"]] == [f"recipe={n},seed={s}" for n, _, _ in defined for s in seeds[n]]
    cfgs = {name: cfg for name, cfg, _ in defined}
    for t in sweep["trials"]:
        want = cfgs[t["point"]["recipe"]].replace(seed=t["seed"]).to_dict()
        assert not differing_fields(t["config"], want, ignore=("device",)), t["name"]
        assert not t.get("diverged") and len(t["epochs"]) == want["epochs"]
    best = shipped.load(shipped.SHIPPED["best"])["metrics"]  # the best recipe's protocol: the frontier's best runs
    runs = [t for t in sweep["trials"] if t["point"]["recipe"] == "best"]
    assert [r["epochs"] for r in best["runs"]] == [t["epochs"] for t in runs]
    assert not differing_fields(best["config"], cfgs["best"].to_dict(), ignore=("device", "seed"))
