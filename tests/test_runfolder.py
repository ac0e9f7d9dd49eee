"""labkit.runfolder: one writer per folder, resume that checks what it finds, nothing finished replaced by less."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from labkit.recipes import recipe
from labkit.progress import Progress
from labkit.runfolder import FolderBusy, RunFolder, RunFolderError, fresh_dir, protocol_name, runs_dir
from labkit.train import train_runs

TINY = dict(epochs=1, limit_train=256, device="cpu")


def quiet(runs=1):
    return Progress(runs, 1, live=False, stream=open(os.devnull, "w"))


def _train(cfg, out, runs=1, **kw):
    return train_runs(cfg, runs=runs, out_dir=out, progress=quiet(runs), **kw)


def _cli(*args, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "labkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = RunFolder(tmp_path / "runs")
    folder.prepare()
    try:
        # another process: the lock is per open file description, so a child is a real second writer
        code = ("import sys; from labkit.runfolder import RunFolder, FolderBusy\n"
                "try:\n    RunFolder(sys.argv[1]).prepare()\nexcept FolderBusy as e:\n    print(e); sys.exit(3)\n")
        child = subprocess.run([sys.executable, "-c", code, str(folder.path)], capture_output=True, text=True)
        assert child.returncode == 3, child.stderr
        assert f"process {os.getpid()}" in child.stdout and "--wait" in child.stdout
    finally:
        folder.release()
    child = subprocess.run([sys.executable, "-c", code, str(folder.path)], capture_output=True, text=True)
    assert child.returncode == 0, child.stdout + child.stderr  # released: the next writer gets it


def test_two_trainings_of_different_configs_into_one_folder_never_mix(tmp_path):
    """Two trainings of different configs started together into one --out: one trains, the other is refused."""
    out = tmp_path / "race"
    common = ["train", "--model", "baseline", "--epochs", "2", "--limit-train", "2000", "--device", "cpu",
              "--out", str(out)]
    a, b = _cli(*common, "--lr", "1e-4"), _cli(*common, "--lr", "3e-4")  # both stable (1e-3 diverges on raw pixels)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (a, b)]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results  # one trains, the other is refused in one line
    refused = next(r for r in results if r[0] == 2)
    assert refused[2].startswith("labkit train: error: ") and refused[2].count("\n") == 1, refused[2]
    assert "being written by process" in refused[2] or "another config" in refused[2]
    metrics = RunFolder(out).metrics()
    from labkit.checkpoint import read

    assert read(RunFolder(out).checkpoint(1))["config"]["lr"] == metrics["config"]["lr"]  # weights and record agree
    assert metrics["runs"][0]["epochs"][-1]["epoch"] == 2


def test_parallel_trainings_without_out_get_folders_of_their_own(tmp_path):
    procs = [_cli("train", "--model", "baseline", "--epochs", "1", "--limit-train", "256", "--device", "cpu",
                  "--seed", str(s)) for s in (1, 2, 3)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        outs.append(stdout.strip().splitlines()[-1].removeprefix("metrics: "))
    assert len(set(outs)) == 3
    try:
        seeds = sorted(RunFolder(os.path.dirname(o)).metrics()["runs"][0]["seed"] for o in outs)
        assert seeds == [1, 2, 3]
    finally:
        import shutil

        for o in outs:
            shutil.rmtree(os.path.dirname(o), ignore_errors=True)


def test_fresh_dir_names_carry_the_pid_and_never_repeat(tmp_path):
    a = fresh_dir("train-x", tmp_path)
    a.mkdir()
    b = fresh_dir("train-x", tmp_path)
    assert a != b and f"-{os.getpid()}" in a.name and b.name.startswith(a.name)


def test_a_truncated_checkpoint_is_kept_aside_and_its_run_retrained(tmp_path, capsys):
    cfg = recipe("baseline", **TINY)
    out = tmp_path / "runs"
    first = _train(cfg, out, runs=2)
    ckpt = RunFolder(out).checkpoint(2)
    ckpt.write_bytes(ckpt.read_bytes()[:100_000])
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match="checkpoint of seed 2 cannot be read"):
        again = _train(cfg, out, runs=2)
    printed = capsys.readouterr().out
    assert list(out.glob("run-seed2.pt.damaged-*"))
    assert again["runs"][0] == first["runs"][0] and "(seed 1): finished earlier" in printed  # loaded
    assert "(seed 2): finished earlier" not in printed  # retrained
    assert again["runs"][1]["epochs"][0]["test_acc"] == first["runs"][1]["epochs"][0]["test_acc"]  # same seed, same run


def test_finished_runs_without_checkpoints_are_kept_before_retraining(tmp_path):
    """A metrics.json of finished runs is never replaced by fewer runs (e.g. shipped runs carry no .pt)."""
    cfg = recipe("baseline", **TINY)
    out = tmp_path / "runs"
    _train(cfg, out, runs=3)
    before = RunFolder(out).metrics_path.read_text()
    for p in RunFolder(out).checkpoints().values():
        p.unlink()
    with pytest.warns(RuntimeWarning, match="without a checkpoint; kept a copy"):
        _train(cfg, out, runs=3)
    kept = list(out.glob("metrics.json.kept-*"))
    assert len(kept) == 1 and kept[0].read_text() == before


def test_finished_runs_of_seeds_not_asked_for_stay_in_metrics_json(tmp_path):
    cfg = recipe("baseline", **TINY)
    out = tmp_path / "runs"
    _train(cfg, out, runs=3)
    _train(cfg, out, runs=1)
    assert sorted(r["seed"] for r in RunFolder(out).metrics()["runs"]) == [1, 2, 3]


def test_a_checkpoint_of_another_config_is_refused_on_resume(tmp_path):
    out = tmp_path / "runs"
    _train(recipe("baseline", **TINY), out)
    other = tmp_path / "other"
    _train(recipe("baseline", lr=1e-3, **TINY), other)
    RunFolder(other).checkpoint(1).replace(RunFolder(out).checkpoint(1))  # a foreign weights file under our record
    with pytest.raises(RunFolderError, match=r"run-seed1.pt is a run of another config \(differs in lr\)"):
        _train(recipe("baseline", **TINY), out)


def test_no_resume_moves_runs_aside_and_refuses_another_config_unless_asked(tmp_path):
    cfg = recipe("baseline", **TINY)
    out = tmp_path / "runs"
    _train(cfg, out)
    _train(cfg, out, resume=False)  # same config: the earlier run moves aside
    moved = list(out.glob("replaced-*"))
    assert len(moved) == 1 and (moved[0] / "metrics.json").is_file() and (moved[0] / "run-seed1.pt").is_file()
    before = RunFolder(out).metrics_path.read_bytes()
    with pytest.raises(RunFolderError, match="another config .differs in lr.*--move-aside"):
        _train(recipe("baseline", lr=1e-3, **TINY), out, resume=False)
    assert RunFolder(out).metrics_path.read_bytes() == before
    _train(recipe("baseline", lr=1e-3, **TINY), out, resume=False, move_aside=True)
    assert len(list(out.glob("replaced-*"))) == 2 and RunFolder(out).metrics()["config"]["lr"] == 1e-3


@pytest.mark.parametrize("where", ["shipped", "notebooks"])
def test_training_never_writes_shipped_runs_or_notebooks(where, capsys):
    from labkit.config import NOTEBOOKS_DIR
    from labkit.runfolder import SHIPPED_DIR
    from labkit.cli import main

    target = SHIPPED_DIR / "baseline-e50-fp32" if where == "shipped" else NOTEBOOKS_DIR / "runs"
    before = sorted(p.name for p in target.parent.rglob("*"))
    assert main(["train", "--model", "baseline", "--runs", "10", "--out", str(target), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("shipped runs" in err or "inside notebooks/" in err)
    assert sorted(p.name for p in target.parent.rglob("*")) == before


@pytest.mark.parametrize("make_out, why", [
    (lambda tmp: tmp / "afile", "exists and is not a folder"),
    (lambda tmp: tmp / "afile" / "sub", "a part of the path is a file"),
])
def test_an_impossible_out_is_one_line_before_any_training(make_out, why, tmp_path, capsys):
    from labkit.cli import main

    (tmp_path / "afile").write_text("x")
    t0 = time.perf_counter()
    assert main(["train", "--model", "baseline", "--epochs", "1", "--out", str(make_out(tmp_path)),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit train: error: ") and err.count("\n") == 1 and why in err, err
    assert time.perf_counter() - t0 < 30  # refused before the data loads and training starts (a generous bound)


def test_a_read_only_out_is_one_line_before_any_training(tmp_path, capsys):
    """A real read-only file system (a read-only bind mount); root ignores permission bits, not that."""
    from labkit.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode == 0
    if not mounted:  # not root, or no mount permission: an unwritable folder then shows the same
        ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK) and not mounted:
            pytest.skip("cannot make a read-only folder here (root without mount permission)")
        assert main(["train", "--model", "baseline", "--epochs", "1", "--out", str(ro / "sub"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("read-only file system" in err or "permission denied" in err), err
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        ro.chmod(0o755)


def test_protocol_names_match_the_shipped_folders():
    assert protocol_name(recipe("baseline"), "cpu", "fp32") == "baseline-e50-fp32"
    assert protocol_name(recipe("improved", precision="fp32"), "cpu", "fp32") == "improved-e5-fp32"
    assert protocol_name(recipe("improved", limit_train=3000), "cuda", "bf16") == "improved-e5-n3000-bf16-cuda"
    assert runs_dir(recipe("baseline", device="cpu")).name == "baseline-e50-fp32"


def test_lock_is_refused_in_process_for_a_second_folder_object(tmp_path):
    """flock is per open file: a second RunFolder on the same path in this process is refused too."""
    a, b = RunFolder(tmp_path), RunFolder(tmp_path)
    a.prepare()
    try:
        with pytest.raises(FolderBusy):
            b.prepare()
    finally:
        a.release()
    b.prepare()
    b.release()


@pytest.mark.parametrize("field, value, said", [("device_type", "cuda", "trained on cuda in fp32"),
                                                ("precision", "bf16", "trained on cpu in bf16")])
def test_runs_of_another_device_or_precision_are_not_mixed_into_one_table(field, value, said, tmp_path):
    """A folder resumed on another machine: "auto" may resolve to CUDA or to bf16 there (labkit.device.setup_run)."""
    from labkit.records import save_json

    cfg = recipe("baseline", **TINY)
    out = tmp_path / "runs"
    _train(cfg, out)
    folder = RunFolder(out)
    metrics = folder.metrics()
    metrics["runs"][0]["setup"][field] = value  # as a run on that machine records it
    save_json(folder.metrics_path, metrics)
    with pytest.raises(RunFolderError, match=f"holds seed 1 {said}, and this run trains on cpu in fp32"):
        _train(cfg, out, runs=2)
