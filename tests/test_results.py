"""labkit.results: the shipped runs match their manifest, results.json and the README quote them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from labkit import results
from labkit.data import load_mnist


def test_every_shipped_file_matches_the_manifest_and_all_fit_in_25_mb():
    listed = results.verify()
    assert {rel.split("/")[0] for rel in listed} == set(results.SHIPPED.values())
    for protocol in results.SHIPPED.values():
        assert {f"{protocol}/{f}" for f in ("metrics.json", "epochs.csv", results.PROBS)} <= set(listed)
    on_disk = [p for p in results.RUNS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in on_disk) <= 25 * 2**20


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "runs"
    shutil.copytree(results.RUNS_DIR, copy)
    monkeypatch.setattr(results, "RUNS_DIR", copy)
    monkeypatch.setattr(results, "MANIFEST", copy / "SHA256SUMS")
    protocol = results.SHIPPED["baseline"]
    text = (copy / protocol / "metrics.json").read_text()
    (copy / protocol / "metrics.json").write_text(text.replace('"test_acc": 0.9', '"test_acc": 0.8', 1))
    with pytest.raises(results.ResultsError, match="SHA-256 differs"):
        results.load(protocol)


@pytest.mark.parametrize("model", list(results.SHIPPED))
def test_recorded_accuracies_are_what_the_probabilities_give(model):
    """Each run's final test accuracy in metrics.json against its shipped test-set probabilities."""
    run = results.load(results.SHIPPED[model])
    y = load_mnist("test")[1]
    again = (run["probs"].argmax(2) == y).mean(1)
    recorded = np.array([r["epochs"][-1]["test_acc"] for r in run["metrics"]["runs"]])
    assert run["probs"].shape == (len(recorded), 10_000, 10) and len(recorded) == 10
    np.testing.assert_allclose(run["probs"].sum(2), 1, atol=1e-4)
    assert np.abs(again - recorded).max() <= 2 / 10_000
    assert all(len(r["epochs"]) == run["metrics"]["config"]["epochs"] for r in run["metrics"]["runs"])


def test_results_json_is_what_the_shipped_runs_give():
    y = load_mnist("test")[1]
    committed = results.read_results()
    for protocol in results.SHIPPED.values():
        assert json.loads(json.dumps(results.headline(protocol, y))) == committed[protocol], protocol


def test_readme_quotes_results_json():
    from labkit.cli import README

    assert results.readme_table() in README.read_text(encoding="utf-8"), "README is stale: run `labkit readme`"
