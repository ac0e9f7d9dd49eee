"""The notebooks' other paths, run with papermill (nbval runs them at their defaults)."""
from __future__ import annotations

import json

import papermill as pm
import pytest

from labkit.config import NOTEBOOKS_DIR


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """Notebook 03 with retrain=True at tiny settings, into a temporary folder, with MPLBACKEND=Agg set."""
    import os

    tmp = tmp_path_factory.mktemp("nb03")
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"  # common in CI: figures must still appear in the executed notebook
    try:
        pm.execute_notebook(str(NOTEBOOKS_DIR / "03_evaluate_10_runs.ipynb"), str(tmp / "03.ipynb"), kernel_name="python3",
                            parameters=dict(retrain=True, runs=2, epochs=1, limit_train=3000, out_dir=str(tmp / "runs")),
                            cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    finally:
        os.environ.pop("MPLBACKEND") if old is None else os.environ.__setitem__("MPLBACKEND", old)
    return tmp, json.loads((tmp / "03.ipynb").read_text())


def _text(nb) -> str:
    out = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            out.append("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_retrain_trains_into_the_given_folder_and_not_into_outputs(retrained):
    tmp, nb = retrained
    for m in ("baseline", "improved"):
        metrics = json.loads((tmp / "runs" / m / "metrics.json").read_text())
        assert [r["seed"] for r in metrics["runs"]] == [1, 2] and metrics["config"]["limit_train"] == 3000
    text = _text(nb)
    assert "2 runs trained here into" in text and "shipped runs" not in text
    assert "Test accuracy — baseline" in text


def test_figures_appear_with_mplbackend_agg(retrained):
    _, nb = retrained
    pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert pngs >= 5  # two curves, per-digit accuracy, confusion matrix, mistakes


def _run(tmp, name, **parameters) -> dict:
    out = tmp / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(out), kernel_name="python3", parameters=parameters,
                        cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    return json.loads(out.read_text())


def test_notebook_05_retrains_its_grid_into_the_given_folder(tmp_path):
    from labkit.sweep import load_sweep

    nb = _run(tmp_path, "05_sweeps", retrain=True, lrs="1e-4,1e-2", seeds="1-2", epochs=1, limit_train=2000,
              out_dir=str(tmp_path / "grid"))
    s = load_sweep(tmp_path / "grid")
    assert [t["name"] for t in s["trials"]] == ["lr=0.0001,seed=1", "lr=0.0001,seed=2", "lr=0.01,seed=1", "lr=0.01,seed=2"]
    assert all(t["diverged"] for t in s["trials"] if t["config"]["lr"] == 1e-2)  # raw pixels: 1e-2 diverges
    assert "as shipped" not in _text(nb) and (tmp_path / "grid" / "accuracy_vs_lr.png").is_file()


def test_notebook_06_retrains_the_whole_ladder_and_its_checks_hold(tmp_path):
    from labkit.recipes import ladder
    from labkit.sweep import load_sweep

    nb = _run(tmp_path, "06_ablations", retrain=True, seeds="1-2", epochs=1, limit_train=500,
              out_dir=str(tmp_path / "ladder"))
    s = load_sweep(tmp_path / "ladder")
    assert s["grid"]["rung"] == list(ladder()) and len(s["trials"]) == 2 * len(ladder())
    assert "every run checked against its probabilities and its rung's definition" in _text(nb)


def test_notebook_07_retrains_some_frontier_points_and_its_checks_hold(tmp_path):
    from labkit.sweep import load_sweep

    nb = _run(tmp_path, "07_frontier", retrain=True, only="improved-e1,keras", seeds="1-2", limit_train=400,
              out_dir=str(tmp_path / "frontier"))
    s = load_sweep(tmp_path / "frontier")
    assert s["grid"]["recipe"] == ["keras", "improved-e1"] and len(s["trials"]) == 4
    text = _text(nb)
    assert "every run checked against its recipe's definition and its probabilities" in text
    assert "improved-e1 − keras" not in text and "2 recipes, 4 runs" in text
