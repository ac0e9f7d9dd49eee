"""`labkit sweep` on Ray Tune: a tiny grid (2 learning rates x 2 seeds, 500 images, 1 epoch) on the local
instance and on a separately started cluster, a killed worker, Ctrl-C and resume, bad grids."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import helpers
from labkit import grid, sweep
from labkit.cli import main as cli_main
from labkit.recipes import recipe

pytest.importorskip("ray.tune")  # the `sweep` extra (installed by `make test`)

# pinned to the CPU: the tests compare trials with runs and with each other exactly (CUDA's numbers differ)
TINY = ["--model", "baseline", "--grid", "lr=1e-4,1e-3", "--seeds", "1-2", "--epochs", "1", "--limit-train", "500",
        "--cpus-per-trial", "1", "--device", "cpu"]
NAMES = ["lr=0.0001,seed=1", "lr=0.0001,seed=2", "lr=0.001,seed=1", "lr=0.001,seed=2"]
KILLED = helpers.KILLED_TRIAL


def _short_tmp(factory, name):
    """A temp folder short enough for Ray's Unix sockets (107 bytes) below it."""
    path = factory.mktemp(name)
    return path if len(str(path)) <= 48 else Path(tempfile.mkdtemp(prefix=name, dir="/tmp"))


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory):
    """Ray's session folders go under pytest's temp folder, not /tmp/ray."""
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(_short_tmp(tmp_path_factory, "rt"))
    yield Path(os.environ["RAY_TMPDIR"])
    if old is None:
        os.environ.pop("RAY_TMPDIR")
    else:
        os.environ["RAY_TMPDIR"] = old


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, ray_tmp):
    """The tiny sweep on the local Ray instance, one trial's worker killed on its first attempt."""
    from ray import cloudpickle

    out = tmp_path_factory.mktemp("sweep")
    cloudpickle.register_pickle_by_value(helpers)  # Ray's workers cannot import tests/helpers.py
    try:
        s = sweep.run("baseline", ["lr=1e-4,1e-3"], "1-2", epochs=1, limit_train=500, cpus_per_trial=1, out_dir=out,
                      trial_fn=helpers.trial_killed_once)
    finally:
        cloudpickle.unregister_pickle_by_value(helpers)
    return (1 if s["failed"] else 0), out


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _one_thread(fn):
    """fn() with torch on one thread, as each trial runs (the thread count changes the last bits of sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def test_one_result_per_trial_each_equal_to_a_single_training_run(local_sweep, small_data):
    from labkit.train import train_run

    rc, out = local_sweep
    assert rc == 0
    s = sweep.load_sweep(out)
    assert s["grid"] == {"lr": [1e-4, 1e-3]} and s["seeds"] == [1, 2] and s["trials_requested"] == 4
    assert [t["name"] for t in s["trials"]] == NAMES
    assert s["provenance"]["ray"] and s["provenance"]["cpus_per_trial"] == 1
    data = {**small_data, "x_train": small_data["x_train"][:500], "y_train": small_data["y_train"][:500]}
    for t in s["trials"]:
        cfg = recipe("baseline", lr=t["config"]["lr"], seed=t["seed"], epochs=1, limit_train=500, device="cpu")
        assert t["config"] == cfg.to_dict()  # every TrainConfig field
        assert len(t["epochs"]) == 1 and t["provenance"]["cpu_threads"] == 1 and t["provenance"]["device"] == "cpu"
        alone = _one_thread(lambda: train_run(cfg, data=data))["epochs"][0]
        mine = t["epochs"][0]
        for k in ("train_acc", "test_acc"):  # to the printed digits (the table prints 4)
            assert f"{mine[k]:.4f}" == f"{alone[k]:.4f}", (t["name"], k)
        for k in ("train_loss", "test_loss"):
            assert mine[k] == pytest.approx(alone[k], rel=1e-4, nan_ok=True), (t["name"], k)
        # the trial's folder is what `labkit train --out` writes: metrics.json, epochs.csv, checkpoint
        d = Path(t["dir"])
        m = json.loads((d / "metrics.json").read_text())
        assert _strip(m["runs"][0]["epochs"]) == _strip(t["epochs"])
        assert (d / "epochs.csv").exists() and (d / f"run-seed{t['seed']}.pt").exists()
    csv = (out / "sweep.csv").read_text().splitlines()
    assert csv[0] == "lr,seed,epochs,train_loss,train_acc,test_loss,test_acc,wall_seconds,diverged" and len(csv) == 5
    assert csv[3].startswith("0.001,1,1,")


def test_a_trial_equals_labkit_train_with_the_same_flags(local_sweep, tmp_path, capsys):
    """Any trial can be rerun alone with `labkit train --lr ... --seed ...`, with the same numbers."""
    _, out = local_sweep
    trial = next(t for t in sweep.load_sweep(out)["trials"] if t["name"] == "lr=0.001,seed=2")
    assert _one_thread(lambda: cli_main(["train", "--model", "baseline", "--lr", "1e-3", "--seed", "2", "--epochs", "1",
                                         "--limit-train", "500", "--device", "cpu", "--out", str(tmp_path / "alone")])) == 0
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert alone["config"] == trial["config"]
    assert _strip(alone["runs"][0]["epochs"]) == _strip(trial["epochs"])


def test_a_killed_worker_is_retried_and_the_sweep_completes(local_sweep):
    rc, out = local_sweep
    assert "killed itself" in (out / f"killed-once-{KILLED}").read_text()
    s = sweep.load_sweep(out)
    assert rc == 0 and len(s["trials"]) == 4
    killed = next(t for t in s["trials"] if t["name"] == KILLED)
    assert len(killed["epochs"]) == 1
    assert {t["name"]: t["retries"] for t in s["trials"]} == {n: int(n == KILLED) for n in NAMES}  # Tune retried it once


def test_rerun_skips_finished_trials(local_sweep, capsys):
    _, out = local_sweep
    before = sweep.load_sweep(out)["trials"]
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/metrics.json")}
    capsys.readouterr()
    assert cli_main(["sweep", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 finished earlier, 0 to run" in printed and "ray " not in printed  # Ray not even started
    assert sweep.load_sweep(out)["trials"] == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "0.0001      2" in printed  # the table: lr, seeds, mean ± std


@pytest.mark.parametrize("grid, why", [
    (["--grid", "lrr=1e-4"], "unknown field 'lrr'"),
    (["--grid", "lr=1e-4,fast"], "lr: 'fast' is not a number"),
    (["--grid", "batch_size=64,1.5"], "batch_size: '1.5' is not a whole number"),
    (["--grid", "lr="], "lr has an empty list of values"),
    (["--grid", "lr=-1"], "lr > 0"),
    (["--grid", "seed=1,2"], "give seeds with --seeds"),
    (["--grid", "lr=1e-4", "--grid", "lr=1e-3"], "lr is given twice"),
    (["--grid", "lr=1e-4", "--seeds", "3-1"], "counts down"),
])
def test_a_bad_grid_is_one_clear_error_before_anything_starts(grid, why, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli_main(["sweep", "--model", "baseline", *grid, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert why in err and err.startswith("labkit sweep: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


def test_parse_grid_types_and_all_problems_at_once():
    base = recipe("baseline")
    g = grid.parse_grid(["lr=1e-5, 1e-4", "batch_size=64,128", "nesterov=true,false", "limit_train=none,600",
                          "schedule=onecycle"], base)
    assert g == {"lr": [1e-5, 1e-4], "batch_size": [64, 128], "nesterov": [True, False], "limit_train": [None, 600],
                 "schedule": ["onecycle"]}
    assert grid.parse_grid({"lr": [1e-3, 0.01]}, base) == {"lr": [1e-3, 0.01]}
    with pytest.raises(grid.SweepError) as e:
        grid.parse_grid(["foo=1", "lr=x", "momentum=1.5", "epochs=2,2"], base)
    msg = str(e.value)
    for part in ("unknown field 'foo'", "lr: 'x' is not a number", "momentum", "epochs lists 2 twice"):
        assert part in msg
    assert grid.parse_seeds("1-3,7") == [1, 2, 3, 7] and grid.parse_seeds(5) == [5]
    for bad in ("", "1-2,2", "a-b", "-1"):
        with pytest.raises(grid.SweepError):
            grid.parse_seeds(bad)


def test_an_address_where_no_cluster_answers_is_a_clear_error(tmp_path, capsys):
    port = _free_port()  # nothing listens there (Ray itself would retry for minutes)
    assert cli_main(["sweep", *TINY, "--out", str(tmp_path / "s"), "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at '127.0.0.1:{port}'" in err and "Traceback" not in err


def test_ray_stays_on_loopback_without_usage_stats():
    env = sweep.ray_env(None)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["http_proxy"] == env["https_proxy"] == "http://127.0.0.1:9" and "127.0.0.1" in env["no_proxy"]
    assert sweep.ray_env("127.0.0.1:6379")["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    far = sweep.ray_env("10.1.2.3:6379")  # a real cluster's own address: Ray must use the network there
    assert far["RAY_USAGE_STATS_ENABLED"] == "0" and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in far
    assert "http_proxy" not in far


def test_ctrl_c_keeps_finished_trials_and_a_rerun_completes_the_rest(tmp_path, ray_tmp, capsys):
    out = tmp_path / "sweep"
    args = [*TINY, "--seeds", "1-4", "--out", str(out)]  # 8 trials, 2 at a time
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "sweep", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if sweep.load_sweep(out)["trials"]:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again" in stderr and "Traceback" not in stderr and "Tuner.restore" not in stderr
    kept = sweep.load_sweep(out)["trials"]
    assert 1 <= len(kept) < 8, "Ctrl-C came after every trial had finished: make the trials longer"
    capsys.readouterr()
    assert cli_main(["sweep", *args]) == 0
    printed = capsys.readouterr().out
    earlier = int(printed.split(" finished earlier")[0].rsplit(" ", 1)[1])
    assert len(kept) <= earlier < 8 and f"{8 - earlier} to run" in printed
    final = sweep.load_sweep(out)["trials"]
    assert len(final) == 8 and all(len(t["epochs"]) == 1 for t in final)
    for t in kept:  # loaded, not retrained: the same start time and numbers
        again = next(f for f in final if f["name"] == t["name"])
        assert again["provenance"]["started"] == t["provenance"]["started"] and again["epochs"] == t["epochs"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_same_sweep_on_a_separately_started_cluster(local_sweep, tmp_path, tmp_path_factory, capsys, monkeypatch):
    """`ray start --head --node-ip-address 127.0.0.1` in its own processes, then `labkit sweep --address`."""
    import secrets

    ray_bin = Path(sys.executable).with_name("ray")
    temp = _short_tmp(tmp_path_factory, "rc")
    token = tmp_path / "auth_token"  # the cluster's token, not the user's ~/.ray one
    token.write_text(secrets.token_hex(32))
    port = _free_port()
    # the environment labkit gives Ray for a loopback address: 127.0.0.1 only, no usage statistics
    env = {**os.environ, **sweep.ray_env(f"127.0.0.1:{port}"), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    log = (tmp_path / "head.log").open("w")
    # --block keeps the head in this one process, so the finally stops exactly this cluster (`ray stop`
    # would stop every Ray instance on the machine, other people's included)
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", str(temp)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(0.2)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))  # labkit turns token auth on for --address
        out = tmp_path / "sweep"
        capsys.readouterr()
        assert cli_main(["sweep", *TINY, "--out", str(out), "--address", f"127.0.0.1:{port}"]) == 0
        printed = capsys.readouterr().out
        assert f"127.0.0.1:{port}: 2 CPUs" in printed
        s = sweep.load_sweep(out)
        assert s["provenance"]["address"] == f"127.0.0.1:{port}"
        local = sweep.load_sweep(local_sweep[1])["trials"]
        assert [t["name"] for t in s["trials"]] == NAMES
        for a, b in zip(s["trials"], local):
            assert a["config"] == b["config"] and _strip(a["epochs"]) == _strip(b["epochs"])
        assert any(temp.glob("session_*/logs/*"))  # the trials ran in that cluster's processes
    finally:
        head.send_signal(signal.SIGTERM)  # the head drains and stops its raylet, GCS and workers
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()
    leftover = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"processes of the test cluster still running: {leftover}"


def test_a_second_sweep_on_the_same_out_is_refused_in_one_line(tmp_path, capsys):
    from labkit.runfolder import RunFolder

    out = tmp_path / "sweep"
    holder = RunFolder(out)
    holder.prepare()  # as a running sweep holds it
    try:
        assert cli_main(["sweep", *TINY, "--out", str(out)]) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.startswith("labkit sweep: error: ") and err.count("\n") == 1 and "being written by process" in err
    assert not (out / "sweep.json").exists()


def test_too_many_seeds_is_one_line_at_once(tmp_path, capsys):
    t0 = time.perf_counter()
    assert cli_main(["sweep", "--model", "baseline", "--seeds", "1-100000000", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "more than 10,000 seeds" in err and err.count("\n") == 1 and not (tmp_path / "s").exists()
    assert time.perf_counter() - t0 < 5  # no list of a hundred million seeds is built


def test_an_unwritable_home_is_one_line_saying_what_to_set(tmp_path):
    env = {**os.environ, "HOME": "/proc/labkit-no-home"}  # /proc takes no new folders, even from root
    proc = subprocess.run([sys.executable, "-m", "labkit", "sweep", *TINY, "--out", str(tmp_path / "s")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "set HOME to a writable folder" in proc.stderr, proc.stderr


def test_a_diverged_trial_is_recorded_and_drawn_as_diverged(tmp_path, ray_tmp):
    import json as _json

    from labkit import grid as sweep_grid
    from labkit import plots

    out = tmp_path / "sweep"
    s = sweep.run("baseline", ["lr=1e-4,1e38"], "1", epochs=1, limit_train=256, cpus_per_trial=1, out_dir=out,
                  device="cpu", verbose=0)
    bad = next(t for t in s["trials"] if t["config"]["lr"] == 1e38)
    good = next(t for t in s["trials"] if t["config"]["lr"] == 1e-4)
    assert bad["diverged"]["epoch"] == 1 and bad["diverged"]["step"] in (1, 2) and not good["diverged"]
    _json.loads((out / "sweep.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in sweep.json"))
    rows = {r["lr"]: r for r in sweep_grid.point_rows(s)}
    assert (rows[1e38]["n"], rows[1e38]["diverged"]) == (0, 1) and (rows[1e-4]["n"], rows[1e-4]["diverged"]) == (1, 0)
    fig = plots.sweep_accuracy(s, "lr")
    assert any("diverged" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def _fake_sweep(accs: dict[str, list[float]], y, rng):
    """A sweep dict of named points with given final test accuracies, and probabilities that reproduce them."""
    import numpy as np

    trials, probs = [], []
    for point, values in accs.items():
        for seed, acc in enumerate(values, 1):
            right = rng.random(len(y)) < acc
            pred = np.where(right, y, (y + 1) % 10)
            trials.append({"name": f"rung={point},seed={seed}", "point": {"rung": point}, "seed": seed, "diverged": None,
                           "config": {}, "epochs": [{"test_acc": float((pred == y).mean())}], "wall_seconds": 1.0})
            probs.append(np.eye(10)[pred])
    return {"grid": {"rung": list(accs)}, "seeds": [1, 2, 3], "trials": trials}, np.stack(probs)


def test_compare_points_is_the_paired_t_over_seeds_and_mcnemar_on_ensembles():
    import numpy as np
    from labkit.stats import mcnemar_exact, paired_runs

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    s, probs = _fake_sweep({"a": [0.90, 0.91, 0.92], "b": [0.95, 0.955, 0.97]}, y, rng)
    c = grid.compare_points(s, probs, y, "rung", "a", "b")
    accs = lambda p: [t["epochs"][-1]["test_acc"] for t in s["trials"] if t["point"]["rung"] == p]
    assert c["seeds"] == [1, 2, 3] and c["runs"] == paired_runs(accs("a"), accs("b"))
    ens = lambda i: probs[i].mean(0).argmax(1) == y
    assert c["mcnemar_ensemble"] == mcnemar_exact(ens([0, 1, 2]), ens([3, 4, 5]))
    assert c["runs"]["mean_diff"] > 0.03 and c["mcnemar_ensemble"]["p"] < 0.01
    s["trials"][4]["diverged"] = {"epoch": 1, "step": 3}  # b's seed 2 diverged: pairs of seeds 1 and 3 only
    assert grid.compare_points(s, probs, y, "rung", "a", "b")["seeds"] == [1, 3]


def test_the_ladder_figure_shows_every_rung_with_its_runs():
    import numpy as np
    from labkit import plots

    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 500)
    s, _ = _fake_sweep({"report": [0.96, 0.965, 0.97], "relu": [0.98, 0.985, 0.99]}, y, rng)
    fig = plots.ladder_figure(s, ["report", "relu"])
    top = fig.axes[0]
    dots = [line for line in top.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata()) == 3]
    assert len(dots) == 2 and [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["report", "relu"]


def test_a_point_with_its_own_seeds_trains_those():
    base = recipe("baseline", epochs=1)
    trials = grid.plan([({"p": "a"}, base, [1, 2, 3]), ({"p": "b"}, base)], [7])
    assert [(t["point"]["p"], t["seed"]) for t in trials] == [("a", 1), ("a", 2), ("a", 3), ("b", 7)]
    assert [t["config"]["seed"] for t in trials] == [1, 2, 3, 7]


def _curve(accs, secs):
    return [{"epoch": i + 1, "test_acc": a, "seconds": s} for i, (a, s) in enumerate(zip(accs, secs))]


def test_first_at_or_above_is_the_first_epoch_whose_mean_over_seeds_reaches_the_threshold():
    trials = [{"epochs": _curve([0.98, 0.991, 0.996], [10, 10, 10])},
              {"epochs": _curve([0.985, 0.988, 0.994], [12, 12, 12])}]
    # means over seeds per epoch: 0.9825, 0.9895, 0.995; cumulative seconds: 11, 22, 33
    assert grid.first_at_or_above(trials, 0.99) == (3, 33.0)
    assert grid.first_at_or_above(trials, 0.989) == (2, 22.0)
    assert grid.first_at_or_above(trials, 0.98) == (1, 11.0)  # at or above
    assert grid.first_at_or_above(trials, 0.999) is None


def test_frontier_rows_summarise_each_recipe_and_the_figure_draws_them():
    import numpy as np

    from labkit import plots
    from labkit.recipes import PUBLISHED
    from labkit.models import build_model, count_parameters
    from labkit.stats import mean_interval

    def trial(point, model, seed, accs, secs):
        return {"name": f"recipe={point},seed={seed}", "point": {"recipe": point}, "seed": seed, "diverged": None,
                "precision": "bf16", "config": {"model": model, "epochs": len(accs), "precision": "auto"},
                "epochs": _curve(accs, secs), "wall_seconds": sum(secs) + 1.0}

    s = {"grid": {"recipe": ["keras", "improved-e1", "improved-e2"]}, "trials": [
        trial("keras", "keras", 1, [0.97, 0.985], [5, 5]), trial("keras", "keras", 2, [0.975, 0.987], [6, 6]),
        trial("keras", "keras", 3, [0.972, 0.986], [5, 5]),
        trial("improved-e1", "improved", 1, [0.989], [9]), trial("improved-e1", "improved", 2, [0.991], [11]),
        trial("improved-e2", "improved", 1, [0.99, 0.9951], [9, 9]),
        trial("improved-e2", "improved", 2, [0.988, 0.9955], [11, 11])]}
    rows = {r["point"]: r for r in grid.frontier_rows(s)}
    k = rows["keras"]
    assert k["runs"] == 3 and k["parameters"] == count_parameters(build_model("keras")) == 34_826
    assert k["train_seconds"] == pytest.approx(32 / 3) and k["wall_seconds"] == pytest.approx(32 / 3 + 1)
    assert k["mean"] == pytest.approx(np.mean([0.985, 0.987, 0.986]))
    assert k["ci95"] == pytest.approx(mean_interval([0.985, 0.987, 0.986]))
    assert k["to_0.99"] is None and k["precision"] == ["bf16"]
    assert rows["improved-e1"]["to_0.99"] == (1, 10.0)  # mean 0.990
    assert rows["improved-e2"]["to_0.99"] == (2, 20.0) and rows["improved-e2"]["to_0.995"] == (2, 20.0)
    fig = plots.frontier_figure(list(rows.values()), PUBLISHED)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert sum(t.startswith("published:") for t in texts) == len(PUBLISHED)
    assert {t.strip() for t in texts if not t.startswith("published:")} == {"keras", "improved-e1", "improved-e2"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["improved CNN, 2 budgets"]


@pytest.mark.parametrize("args, says", [
    (["--ladder", "--frontier"], "one of --ladder and --frontier"),
    (["--frontier", "--epochs", "2"], "leave out --model, --grid, --precision, --epochs"),
    (["--frontier", "--model", "keras"], "leave out --model"),
    (["--model", "baseline", "--only", "keras"], "--only picks points of --frontier"),
    (["--frontier", "--only", "keras,nosuch"], "no frontier point nosuch"),
])
def test_frontier_mistakes_are_one_line_before_anything_runs(tmp_path, capsys, args, says):
    assert cli_main(["sweep", *args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not (tmp_path / "s").exists()


def test_the_frontier_sweep_trains_the_chosen_points_and_ships_one_as_a_protocol(tmp_path, ray_tmp, monkeypatch):
    import numpy as np

    from labkit import shipped
    from labkit.recipes import frontier
    from labkit.data import load_mnist

    out = tmp_path / "frontier"
    s = sweep.run_frontier("1-2", ["keras", "improved-e1"], limit_train=300, out_dir=out, device="cpu",
                           cpus_per_trial=1, verbose=0)
    assert s["grid"] == {"recipe": ["keras", "improved-e1"]} and not s["failed"]
    want = {name: cfg for name, cfg, _ in frontier(limit_train=300, device="cpu")}
    assert [t["name"] for t in s["trials"]] == ["recipe=keras,seed=1", "recipe=keras,seed=2",
                                                "recipe=improved-e1,seed=1", "recipe=improved-e1,seed=2"]
    for t in s["trials"]:
        assert t["config"] == want[t["point"]["recipe"]].replace(seed=t["seed"]).to_dict()
        assert len(t["epochs"]) == want[t["point"]["recipe"]].epochs
    assert "holdout_acc" in s["trials"][0]["epochs"][0]  # keras holds out 10 % of its training images
    rows = grid.frontier_rows(s)
    assert [r["runs"] for r in rows] == [2, 2] and all(r["train_seconds"] > 0 for r in rows)
    assert json.loads((out / "sweep.json").read_text())["trials_requested"] == 4
    # one point shipped as a two-run protocol, into a copy of data/runs
    runs = tmp_path / "runs"
    for name, value in (("RUNS_DIR", runs), ("MANIFEST", runs / "SHA256SUMS"), ("RESULTS", runs / "results.json")):
        monkeypatch.setattr(shipped, name, value)
    with pytest.raises(shipped.ResultsError, match="no finished trial of recipe=nosuch"):
        shipped.ship_point(out, "recipe=nosuch", "x")
    shipped.ship_point(out, "recipe=keras", "keras-e15")
    got = shipped.load("keras-e15")
    assert [r["seed"] for r in got["metrics"]["runs"]] == [1, 2] and got["probs"].shape == (2, 10_000, 10)
    y = load_mnist("test")[1]
    for run, pr in zip(got["metrics"]["runs"], got["probs"]):
        assert (pr.argmax(1) == np.asarray(y)).mean() == pytest.approx(run["epochs"][-1]["test_acc"], abs=1e-6)
    assert shipped.read_results()["keras-e15"]["runs"] == 2


def test_ship_point_of_a_folder_without_a_sweep_is_one_line(tmp_path, capsys):
    assert cli_main(["ship", str(tmp_path), "x", "--point", "recipe=best"]) == 2
    err = capsys.readouterr().err
    assert "--point picks a point of a sweep" in err and err.count("\n") == 1
