"""labkit.records and safeio.read_json: bounded strict reads of metrics, strict JSON writes, and
atomic writes that fail in one line on a full, size-limited or read-only disk and leave nothing behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from labkit.config import DATA_DIR, PROJECT_ROOT
from labkit.records import MetricsError, WriteError, atomic_write, load_metrics, save_json
from labkit.safeio import ReadRefused, read_json

SHIPPED = sorted((DATA_DIR / "runs").glob("*/metrics.json"))


def strict(text: str):
    """json.loads that refuses NaN and Infinity, as strict JSON readers do."""
    def refuse(name):
        raise ValueError(f"bare {name}")
    return json.loads(text, parse_constant=refuse)


# -- reading


def test_read_json_refuses_fifo_device_oversize_nan_and_bad_json(tmp_path):
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)  # read_text() would block here until a writer came
    cases = {fifo: "is a FIFO (named pipe), not a JSON file", Path("/dev/zero"): "is a character device"}
    big = tmp_path / "big.json"
    big.write_text("[" + "1," * 600 + "1]")
    nan = tmp_path / "nan.json"
    nan.write_text('{"a": NaN}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    for path, words in {**cases, nan: "not strict JSON (NaN is not a JSON number)",
                        bad: "not valid JSON (line 2, column 7: Expecting value)"}.items():
        with pytest.raises(ReadRefused) as e:
            read_json(path)
        assert str(e.value) == f"{path}: {e.value.problem}" and words in e.value.problem
    with pytest.raises(ReadRefused, match="over the limit of 1,000 bytes"):
        read_json(big, limit=1000)
    assert read_json(big) == [1] * 601


def test_shipped_metrics_load_and_a_row_missing_a_key_is_refused(tmp_path):
    assert len(SHIPPED) == 3
    data = load_metrics(SHIPPED[0])
    assert data["runs"] and all(r["epochs"] for r in data["runs"])
    del data["runs"][1]["epochs"][3]["train_loss"]
    edited = tmp_path / "metrics.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(MetricsError) as e:
        load_metrics(edited)
    assert str(e.value) == f"{edited}: run 2 (seed {data['runs'][1]['seed']}), epoch row 4 has no train_loss"
    data["runs"][1]["epochs"][3]["train_loss"] = "low"
    edited.write_text(json.dumps(data))
    with pytest.raises(MetricsError, match="epoch row 4: train_loss not a number or null"):
        load_metrics(edited)
    data["runs"][1]["epochs"][3]["train_loss"] = None  # a diverged run's epoch
    edited.write_text(json.dumps(data))
    assert load_metrics(edited)["runs"][1]["epochs"][3]["train_loss"] is None


def test_load_metrics_refuses_a_fifo_and_dev_zero_unread(tmp_path):
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(MetricsError, match="cannot be read \\(is a .*, not a metrics.json\\)"):
            load_metrics(path)


# -- writing


def test_save_json_writes_strict_json_with_null_for_nan_and_infinities(tmp_path):
    save_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "x"})
    assert strict((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None, {"c": None}], "d": "x"}


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    """Two processes and two threads rewriting one file: each through its own temporary name, so
    none fails and the file always holds one writer's whole JSON."""
    target = tmp_path / "metrics.json"
    code = textwrap.dedent(f"""
        import sys
        from labkit.records import save_json
        for i in range(150):
            save_json({str(target)!r}, {{"writer": sys.argv[1], "i": i, "pad": "x" * 5000}})
    """)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, w], env=env, stderr=subprocess.PIPE, text=True)
             for w in ("a", "b")]
    errors = []

    def thread_writer(name):
        try:
            for i in range(150):
                save_json(target, {"writer": name, "i": i, "pad": "y" * 5000})
                assert strict(target.read_text())["writer"] in ("a", "b", "t1", "t2")
        except Exception as e:  # reported below, with what failed
            errors.append(repr(e))

    threads = [threading.Thread(target=thread_writer, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert errors == []
    assert strict(target.read_text())["i"] == 149
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at path (yields True), or yields False where mounting is not permitted."""
    path.mkdir(exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


FSIZE_WRITER = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    import torch
    from labkit.checkpoint import save_checkpoint
    from labkit.recipes import recipe
    from labkit.models import build_model
    from labkit.records import WriteError
    try:
        save_checkpoint(sys.argv[1], build_model("baseline"), recipe("baseline", epochs=1),
                        {"seed": 1, "epochs": [], "provenance": {}})
    except WriteError as e:
        print(e)
        sys.exit(3)
""")


def _fsize_limited_save(path: Path, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LABKIT_NO_KERNEL": "1"}
    return subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(path), str(limit)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_full_disk_is_one_line_and_leaves_the_old_file_and_no_temporary(tmp_path):
    """A real full disk: a 1 MiB tmpfs (mount -t tmpfs -o size=1m), where the test may mount one;
    where it may not, a size-limited substitute: RLIMIT_FSIZE of 1 MiB (as in the test below)."""
    import torch

    from labkit.checkpoint import read, save_checkpoint
    from labkit.recipes import recipe
    from labkit.models import build_model

    disk = tmp_path / "disk"
    with tmpfs(disk, "size=1m") as mounted:
        path = disk / "run-seed1.pt"
        save_checkpoint(path, build_model("improved"), recipe("improved", epochs=1),  # 0.4 MB: fits
                        {"seed": 1, "epochs": [], "provenance": {}})
        before = path.read_bytes()
        if mounted:
            with pytest.raises(WriteError) as e:  # the baseline's 1.6 MB do not
                save_checkpoint(path, build_model("baseline"), recipe("baseline", epochs=1),
                                {"seed": 1, "epochs": [], "provenance": {}})
            assert str(e.value) == f"cannot write {path}: no space left on device"
            with pytest.raises(WriteError, match="no space left on device"):
                save_json(disk / "metrics.json", {"pad": "z" * 2_000_000})
        else:
            run = _fsize_limited_save(path, 2**20)
            assert run.returncode == 3 and run.stdout.strip() == f"cannot write {path}: file too large (over the file size limit)"
        assert path.read_bytes() == before and read(path)["model"] == "improved"
        assert sorted(p.name for p in disk.iterdir()) == ["run-seed1.pt"]  # no temporary file left
        assert torch.load(path, weights_only=True)["model"] == "improved"


def test_a_file_size_limit_is_one_line_and_leaves_no_temporary(tmp_path):
    """A size-limited file system substitute that always works: RLIMIT_FSIZE of 100 kB in a child
    process (SIGXFSZ ignored, so the write fails with EFBIG)."""
    run = _fsize_limited_save(tmp_path / "run-seed1.pt", 100_000)
    assert run.returncode == 3, run.stderr
    assert run.stdout.strip() == f"cannot write {tmp_path / 'run-seed1.pt'}: file too large (over the file size limit)"
    assert "Traceback" not in run.stderr and list(tmp_path.iterdir()) == []


def test_unwritable_folders_are_one_line(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("keep")
    with pytest.raises(WriteError) as e:
        save_json(a_file / "metrics.json", {})
    assert str(e.value) == f"cannot write {a_file / 'metrics.json'}: a folder on its path is a file"
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mounted:
        if mounted:
            with pytest.raises(WriteError) as e:
                atomic_write(tmp_path / "ro" / "x.json", "{}")
            assert str(e.value) == f"cannot write {tmp_path / 'ro' / 'x.json'}: read-only file system"
    if os.geteuid() != 0:  # root writes into a mode-0555 folder regardless
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(WriteError, match="permission denied"):
            atomic_write(locked / "x.json", "{}")


def test_a_failing_writer_function_leaves_no_temporary(tmp_path):
    def half(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt  # not an Exception: passed on as it is, the temporary still removed

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x", half)
    assert list(tmp_path.iterdir()) == []
