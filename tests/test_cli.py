"""The command line: `labkit train`, `labkit predict`, `labkit run-notebooks`; user mistakes get one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from labkit.checkpoint import load_checkpoint
from labkit.cli import main as cli_main
from labkit.config import DEFAULT_CHECKPOINT, MODEL_NAMES, PRECISIONS
from labkit.predict import run_cli, target_from_name

from helpers import IMAGES, bad_image_files


def test_train_writes_metrics_json_csv_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--model", "baseline", "--epochs", "2", "--runs", "2", "--limit-train", "600",
                     "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Test accuracy — baseline" in printed and "Test accuracy — the report" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["model"] == "baseline" and m["config"]["epochs"] == 2 and m["config"]["limit_train"] == 600
    for key in ("git_commit", "python", "torch", "numpy", "data_sha256", "device", "started"):
        assert key in m["provenance"], key
    assert len(m["provenance"]["data_sha256"]) == 4
    assert [r["seed"] for r in m["runs"]] == [1, 2]
    for run in m["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == [1, 2]
        for e in run["epochs"]:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds"):
                assert isinstance(e[key], float), key
            assert 0.1 < e["test_acc"] <= 1 and e["seconds"] > 0
    csv = (out / "epochs.csv").read_text().splitlines()
    assert csv[0] == "model,seed,epoch,train_loss,train_acc,test_loss,test_acc,seconds" and len(csv) == 1 + 2 * 2
    assert csv[-1].startswith("baseline,2,2,")
    _, ckpt = load_checkpoint(out / "run-seed2.pt")
    assert ckpt["config"]["seed"] == 2 and ckpt["metrics"]["epochs"] == m["runs"][1]["epochs"]
    assert ckpt["provenance"]["data_sha256"] == m["provenance"]["data_sha256"]
    finals = sorted(r["epochs"][-1]["test_acc"] for r in m["runs"])
    assert f"{finals[1]:.4f}" in printed and f"{finals[0]:.4f}" in printed  # the table shows both runs


def test_train_flags_override_the_recipe(tmp_path):
    out = tmp_path / "lr"
    assert cli_main(["train", "--model", "baseline", "--epochs", "1", "--limit-train", "300", "--lr", "0.001",
                     "--batch-size", "64", "--momentum", "0.5", "--weight-decay", "0.0001", "--seed", "3",
                     "--out", str(out), "--device", "cpu"]) == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert (cfg["lr"], cfg["batch_size"], cfg["momentum"], cfg["weight_decay"], cfg["seed"]) == (0.001, 64, 0.5, 0.0001, 3)


def test_help_offers_the_declared_choices_and_no_model_named_seed(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    assert "{" + ",".join((*MODEL_NAMES, "best")) + "}" in text and "{" + ",".join(PRECISIONS) + "}" in text
    assert "{seed" not in text and "seed," not in text


MISTAKES = {
    "epochs 0": (["--epochs", "0"], "--epochs: 0 must be >= 1"),
    "epochs -1": (["--epochs", "-1"], "--epochs: -1 must be >= 1"),
    "epochs text": (["--epochs", "many"], "--epochs: 'many' is not a whole number"),
    "runs 0": (["--runs", "0"], "--runs: 0 must be >= 1"),
    "limit 0": (["--limit-train", "0"], "--limit-train: 0 is outside 1..60000"),
    "limit 70000": (["--limit-train", "70000"], "--limit-train: 70000 is outside 1..60000"),
    "model seed": (["--model", "seed"], "invalid choice: 'seed'"),
    "lr 0": (["--lr", "0"], "--lr: 0 must be > 0"),
    "momentum 1.5": (["--momentum", "1.5"], "0 <= momentum < 1"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_train_mistake_is_one_line_exit_2_nothing_written(name, tmp_path):
    extra, message = MISTAKES[name]
    out = tmp_path / "out"
    argv = ["train", "--model", "baseline", "--out", str(out), "--device", "cpu", *extra]
    if extra[0] == "--model":
        argv = ["train", *extra, "--out", str(out)]
    run = subprocess.run([sys.executable, "-m", "labkit", *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1 and errors[0].startswith("labkit train: error:") and message in errors[0], run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not out.exists()


def test_out_naming_a_file_and_cuda_without_gpu_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    assert cli_main(["train", "--model", "baseline", "--epochs", "1", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"labkit train: error: {a_file} exists and is not a folder" and a_file.read_text() == "keep me"
    if not torch.cuda.is_available():
        out = tmp_path / "gpu"
        assert cli_main(["train", "--model", "baseline", "--epochs", "1", "--device", "cuda", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("labkit train: error: device 'cuda' asked for") and "\n" not in err and not out.exists()


def test_train_into_a_folder_of_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["train", "--model", "baseline", "--limit-train", "300", "--device", "cpu", "--out", str(out)]
    assert cli_main([*base, "--epochs", "1"]) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert cli_main([*base, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labkit train: error:") and "another config (differs in epochs)" in err and "\n" not in err
    assert (out / "metrics.json").read_bytes() == before


def test_predict_json_mixed_files(capsys, tmp_path):
    good, files = IMAGES[0], bad_image_files(tmp_path)
    paths = [str(good), *map(str, files.values()), str(IMAGES[-1])]
    assert run_cli(paths, None, "mnist", True) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == paths
    ok = [line for line in lines if "digit" in line]
    assert len(ok) == 2 and all(set(line) == {"path", "digit", "probabilities"} for line in ok)
    assert ok[0]["digit"] == target_from_name(good.name) and len(ok[0]["probabilities"]) == 10
    errors = [line for line in lines if "error" in line]
    assert len(errors) == len(files) and all(set(e) == {"path", "error"} for e in errors)
    assert "Traceback" not in out + err


def test_predict_text_and_all_good(capsys):
    assert run_cli([str(p) for p in IMAGES[:3]], None, "mnist", False) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert [int(line.split(": ")[1].split()[0]) for line in out.splitlines()] == [target_from_name(p.name) for p in IMAGES[:3]]
    assert run_cli([str(IMAGES[0])], str(DEFAULT_CHECKPOINT), "report", True) == 0
    assert json.loads(capsys.readouterr().out)["digit"] in range(10)


def test_predict_bad_checkpoint_or_method(capsys, tmp_path):
    assert run_cli([str(IMAGES[0])], str(tmp_path / "none.pt"), "mnist", False) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert run_cli([str(IMAGES[0])], str(bad), "mnist", True) == 2
    assert run_cli([str(IMAGES[0])], None, "fancy", True) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 3


# -- the output streams and the disk: real processes, real pipes


def labkit_process(*argv, env=None, **kw) -> subprocess.Popen:
    """`python -m labkit ARGV` with this checkout's package, stdout and stderr piped."""
    import os
    from labkit.config import PROJECT_ROOT

    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "labkit", *map(str, argv)], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_predict_into_a_pipe_closed_after_one_line_exits_quietly():
    """`labkit predict a b c ... | head -n1`."""
    proc = labkit_process("predict", *(IMAGES * 3))
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 141)
    assert first.startswith(f"{IMAGES[0]}: ") and err == ""


def test_train_into_a_pipe_closed_after_one_line_trains_on(tmp_path):
    """`labkit train ... | head -n1`: the progress stream closing never stops training."""
    out = tmp_path / "run"
    proc = labkit_process("train", "--model", "baseline", "--epochs", "3", "--limit-train", "256", "--device", "cpu",
                          "--out", out)
    assert proc.stdout.readline().startswith("training 1 run(s) of 'baseline'")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err == ""
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["runs"][0]["epochs"]] == [1, 2, 3]


def test_a_diverging_run_stops_in_one_line_under_an_ascii_terminal(tmp_path):
    """--lr 1e38 with PYTHONIOENCODING=ascii: the run is marked diverged, metrics.json is strict
    JSON, the table's dashes are replaced rather than fatal, and predict refuses the NaN weights."""
    out = tmp_path / "run"
    proc = labkit_process("train", "--model", "baseline", "--epochs", "3", "--limit-train", "256", "--lr", "1e38",
                          "--device", "cpu", "--out", out, env={"PYTHONIOENCODING": "ascii"})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit train: warning: seed 1 diverged at epoch 1, step "), stderr
    assert lines[0].endswith(" (loss not finite); lower the learning rate")
    assert "Test accuracy ? baseline" in stdout  # "—" replaced

    def no_constants(name):
        raise AssertionError(f"bare {name} in metrics.json")

    run = json.loads((out / "metrics.json").read_text(), parse_constant=no_constants)["runs"][0]
    step = int(lines[0].split("step ")[1].split()[0])
    assert run["diverged"] == {"epoch": 1, "step": step} and 1 <= step <= 2  # 256 images: 2 steps of 128
    assert len(run["epochs"]) == 1 and run["epochs"][0]["train_loss"] is None  # stopped at the epoch it diverged
    predict = labkit_process("predict", "--checkpoint", out / "run-seed1.pt", IMAGES[0])
    p_out, p_err = predict.communicate(timeout=120)
    assert predict.returncode == 2 and p_out == ""
    assert p_err.startswith("labkit predict: error: ") and "weights not finite" in p_err and len(p_err.splitlines()) == 1


def test_predict_on_a_non_ascii_path_under_the_c_locale(tmp_path):
    image = tmp_path / f"{target_from_name(IMAGES[0].name)}_ziffer_für_dich.png"
    image.write_bytes(IMAGES[0].read_bytes())
    proc = labkit_process("predict", image, env={"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stderr == ""
    # under the C locale the path's two UTF-8 bytes of "ü" arrive as two undecodable bytes: each printed as "?"
    assert stdout.startswith(str(image).replace("ü", "??") + f": {target_from_name(IMAGES[0].name)} (probability ")


def test_a_seed_out_of_range_is_one_line_before_any_data_loads(tmp_path):
    out = tmp_path / "run"
    proc = labkit_process("train", "--model", "baseline", "--seed", "99999999999999999999999", "--out", out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stdout == ""
    assert stderr.startswith("labkit train: error: seed must be a whole number in 0..") and len(stderr.splitlines()) == 1
    assert not out.exists()


def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary(tmp_path):
    """A real full disk (a 1 MiB tmpfs) where the test may mount one, else RLIMIT_FSIZE of 1 MiB
    on the training process (SIGXFSZ ignored): the 1.6 MB checkpoint of epoch 1 does not fit."""
    import os
    import resource
    import shutil
    import signal

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode == 0

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    try:
        out = disk / "run"
        proc = labkit_process("train", "--model", "baseline", "--epochs", "2", "--limit-train", "256", "--device", "cpu",
                              "--out", out, env={"LABKIT_NO_KERNEL": "1"}, preexec_fn=None if mounted else limit)
        stdout, stderr = proc.communicate(timeout=300)
        why = "no space left on device" if mounted else "file too large (over the file size limit)"
        assert proc.returncode == 2 and stderr == f"labkit train: error: cannot write {out / 'run-seed1.pt'}: {why}\n"
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing half-written, no temporary; the lock file stays
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_runs_whose_last_seed_is_out_of_range_are_one_line(tmp_path, capsys):
    from labkit.config import MAX_SEED

    out = tmp_path / "run"
    assert cli_main(["train", "--model", "baseline", "--seed", str(MAX_SEED), "--runs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labkit train: error: seed must be a whole number in 0..") and err.count("\n") == 1
    assert not out.exists()
