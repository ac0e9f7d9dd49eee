"""labkit.notebooks_runner: the whole params file is checked before any notebook runs."""
import os
import shutil
import subprocess
import sys

import nbformat
import papermill as pm
import pytest

from labkit.config import NOTEBOOKS_DIR, PARAMS_DIR
from labkit.notebooks_runner import ParamsError, check_params, run_notebooks


def _notebook(path, *sources, params="n: int = 1  # a parameter"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def test_runs_in_order_and_stops_at_a_failure(tmp_path, capsys):
    src = tmp_path / "notebooks"
    src.mkdir()
    _notebook(src / "01_ok.ipynb", "print('n is', n)")
    _notebook(src / "02_fails.ipynb", "x = 1", "raise RuntimeError('boom in cell 3')")
    _notebook(src / "03_never.ipynb", "print('should not run')")
    params = tmp_path / "p.yaml"
    params.write_text("n: 7\n")
    out = tmp_path / "out"
    assert run_notebooks(params_file=params, out_dir=out, notebooks_dir=src) == 1
    err = capsys.readouterr().err
    assert "02_fails.ipynb failed" in err and "RuntimeError" in err and "boom in cell 3" in err
    done = nbformat.read(out / "01_ok.ipynb", as_version=4)
    assert "n is 7" in done.cells[-1].outputs[0]["text"]  # the parameter reached it
    assert (out / "01_ok.html").exists() and (out / "02_fails.ipynb").exists()
    assert not (out / "03_never.ipynb").exists()
    assert sorted(p.name for p in src.iterdir()) == ["01_ok.ipynb", "02_fails.ipynb", "03_never.ipynb"]


@pytest.fixture
def notebooks(tmp_path):
    """Two notebooks; the first leaves a marker file when it runs."""
    src = tmp_path / "notebooks"
    src.mkdir()
    marker = tmp_path / "ran"
    _notebook(src / "01_data.ipynb", f"open({str(marker)!r}, 'w').close()",
              params="n: int = 1  # a parameter\nrate: float = 0.5\nname: str = 'x'")
    _notebook(src / "02_train.ipynb", "pass",
              params="epochs: int = 5\nlimit: Optional[int] = None  # None: all\nfast: bool = False\n"
                     "models = 'a,b'  # no annotation: the default's type")
    return src, marker


def refused(tmp_path, notebooks, text, only=None, name="p.yaml"):
    """The ParamsError message for a params file `text` (None: no file), after checking that
    nothing ran and nothing was written."""
    src, marker = notebooks
    params = tmp_path / name
    if text is not None:
        params.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(ParamsError) as e:
        run_notebooks(params_file=params, out_dir=out, only=only, notebooks_dir=src)
    assert not marker.exists() and not out.exists()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_yaml_syntax_error_names_file_and_line(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "01_data:\n  n: 3\n02_train:\n  epochs: [1, 2\n")
    assert msg.startswith(f"{tmp_path / 'p.yaml'}, line 5, column 1: YAML syntax error: ")


def test_top_level_list(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "- n: 3\n- epochs: 2\n")
    assert msg == (f"{tmp_path / 'p.yaml'}: expected a mapping of notebook names to their parameters at the "
                   f"top level, found a list")


def test_top_level_scalar(tmp_path, notebooks):
    assert refused(tmp_path, notebooks, "just words\n").endswith("at the top level, found a string")


def test_missing_file(tmp_path, notebooks):
    assert refused(tmp_path, notebooks, None, name="nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


def test_python_tag_is_not_constructed(tmp_path, notebooks):
    touched = tmp_path / "touched"
    msg = refused(tmp_path, notebooks, f"01_data:\n  n: !!python/object/apply:os.system ['touch {touched}']\n")
    assert msg == f"{tmp_path / 'p.yaml'}, line 2: the tag !!python/object/apply:os.system is not allowed (plain values only)"
    assert not touched.exists()


def test_misspelled_section_lists_the_valid_names(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "01_dat:\n  n: 3\n")
    assert msg == (f"{tmp_path / 'p.yaml'}: section '01_dat' names no notebook; did you mean '01_data'? "
                   f"the sections are: 01_data, 02_train")


def test_unknown_key_in_a_later_section_found_before_the_first_runs(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "01_data:\n  n: 3\n02_train:\n  epoch: 3\n")
    assert msg == (f"{tmp_path / 'p.yaml'}: 02_train has no parameter 'epoch'; did you mean 'epochs'? "
                   f"its parameters are: epochs, limit, fast, models")


def test_top_level_key_no_notebook_declares(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "epochz: 3\n")
    assert msg.startswith(f"{tmp_path / 'p.yaml'}: 'epochz' at the top level is neither a notebook section nor "
                          f"a parameter of any notebook; did you mean 'epochs'?")


@pytest.mark.parametrize("text,problem", [
    ("02_train:\n  epochs: '5'\n", "02_train: epochs must be an integer, not a string '5'"),
    ("02_train:\n  epochs: 5.5\n", "02_train: epochs must be an integer, not a number 5.5"),
    ("02_train:\n  epochs: true\n", "02_train: epochs must be an integer, not a boolean True"),
    ("02_train:\n  epochs: null\n", "02_train: epochs must be an integer, not null (its default is 5)"),
    ("02_train:\n  limit: all\n", "02_train: limit must be an integer, not a string 'all'"),
    ("02_train:\n  fast: 1\n", "02_train: fast must be true or false, not an integer 1"),
    ("02_train:\n  models: [a, b]\n", "02_train: models must be a string, not a list ['a', 'b']"),
    ("01_data:\n  rate: fast\n", "01_data: rate must be a number, not a string 'fast'"),
    ("01_data:\n  name: 3\n", "01_data: name must be a string, not an integer 3"),
    ("01_data: 3\n", "section '01_data' must map parameter names to values, found an integer"),
    ("n: x\n", "n (top level, for 01_data) must be an integer, not a string 'x'"),
])
def test_wrong_value_type(tmp_path, notebooks, text, problem):
    assert refused(tmp_path, notebooks, text) == f"{tmp_path / 'p.yaml'}: {problem}"


def test_only_matching_nothing(tmp_path, notebooks):
    msg = refused(tmp_path, notebooks, "01_data:\n  n: 3\n", only=["03_evaluate"])
    assert msg == "--only 03_evaluate: matches no notebook; the notebooks are: 01_data, 02_train"


def test_section_of_an_unselected_notebook_is_checked_too(tmp_path, notebooks):
    assert "02_train has no parameter 'nope'" in refused(tmp_path, notebooks, "02_train:\n  nope: 1\n", only=["01"])


def test_out_naming_a_file(tmp_path, notebooks):
    src, marker = notebooks
    (tmp_path / "p.yaml").write_text("")
    (tmp_path / "f").write_text("keep")
    with pytest.raises(ParamsError, match="exists and is not a folder"):
        run_notebooks(params_file=tmp_path / "p.yaml", out_dir=tmp_path / "f", notebooks_dir=src)
    assert not marker.exists() and (tmp_path / "f").read_text() == "keep"


def test_accepted_values(tmp_path, notebooks):
    src, _ = notebooks
    parameters = {nb.stem: pm.inspect_notebook(str(nb)) for nb in sorted(src.glob("*.ipynb"))}
    params = {"01_data": {"n": 3, "rate": 2, "name": "y"},  # an integer is a fine float
              "02_train": {"limit": None, "fast": True, "models": "c", "epochs": 1}, "n": 4}
    chosen = check_params(params, "p.yaml", parameters)
    assert chosen == {"01_data": {"n": 3, "rate": 2, "name": "y"},
                      "02_train": {"limit": None, "fast": True, "models": "c", "epochs": 1}}
    assert check_params({"n": 4, "02_train": None}, "p.yaml", parameters) == {"01_data": {"n": 4}, "02_train": {}}


@pytest.mark.parametrize("name", ["quick.yaml", "full.yaml"])
def test_shipped_params_files_fit_the_notebooks(name):
    from labkit.notebooks_runner import load_params

    parameters = {nb.stem: pm.inspect_notebook(str(nb)) for nb in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))}
    params = load_params(PARAMS_DIR / name)
    chosen = check_params(params, name, parameters)
    assert {k: v for k, v in chosen.items() if v} == {k: v for k, v in params.items()}


def _no_papermill(monkeypatch):
    """papermill fails the test if any notebook is executed."""
    def refuse(*_a, **_k):
        raise AssertionError("a notebook was executed")
    monkeypatch.setattr(pm, "execute_notebook", refuse)


def test_out_in_the_notebooks_folder_is_refused_before_anything_runs(tmp_path, notebooks, monkeypatch):
    src, marker = notebooks
    _no_papermill(monkeypatch)
    (tmp_path / "p.yaml").write_text("")
    (tmp_path / "link").symlink_to(src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    monkeypatch.chdir(tmp_path)
    for out in ("notebooks", src, src / "sub", tmp_path / "link", "./notebooks/../notebooks"):
        with pytest.raises(ParamsError) as e:
            run_notebooks(params_file=tmp_path / "p.yaml", out_dir=out, notebooks_dir=src)
        msg = str(e.value)
        assert msg.startswith(f"--out {out}: is ") and "the notebooks folder" in msg and "\n" not in msg
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before and not marker.exists()


def test_cli_refuses_out_notebooks_in_one_line():
    from labkit.config import PROJECT_ROOT

    run = subprocess.run([sys.executable, "-m", "labkit", "run-notebooks", "--out", str(NOTEBOOKS_DIR), "--only", "01"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith(f"labkit run-notebooks: error: --out {NOTEBOOKS_DIR}: is the notebooks folder")
    assert len(run.stderr.splitlines()) == 1


def test_unwritable_out_is_one_line_before_anything_runs(tmp_path, notebooks, monkeypatch):
    src, marker = notebooks
    _no_papermill(monkeypatch)
    (tmp_path / "p.yaml").write_text("")
    (tmp_path / "afile").write_text("keep")
    cases = {tmp_path / "afile" / "sub": "cannot write there (a folder on its path is a file)"}
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: a read-only mount, where one may be made
        mounted = shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                                                           capture_output=True).returncode == 0
    else:
        ro.chmod(0o555)
        mounted = True
    if mounted:
        cases[ro / "sub"] = "cannot write there (read-only file system)" if os.geteuid() == 0 else "cannot write there (permission denied)"
        cases[ro] = cases[ro / "sub"]
    try:
        for out, words in cases.items():
            with pytest.raises(ParamsError) as e:
                run_notebooks(params_file=tmp_path / "p.yaml", out_dir=out, notebooks_dir=src)
            assert str(e.value) == f"--out {out}: {words}"
    finally:
        if mounted and os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)
    assert not marker.exists() and (tmp_path / "afile").read_text() == "keep"
