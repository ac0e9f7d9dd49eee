import nbformat

from labkit.report import run_report


def _notebook(path, *sources, params="n: int = 1  # a parameter"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def test_report_runs_in_order_and_stops_at_a_failure(tmp_path, capsys):
    src = tmp_path / "notebooks"
    src.mkdir()
    _notebook(src / "01_ok.ipynb", "print('n is', n)")
    _notebook(src / "02_fails.ipynb", "x = 1", "raise RuntimeError('boom in cell 3')")
    _notebook(src / "03_never.ipynb", "print('should not run')")
    params = tmp_path / "p.yaml"
    params.write_text("n: 7\n")
    out = tmp_path / "report"
    assert run_report(params_file=params, out_dir=out, notebooks_dir=src) == 1
    err = capsys.readouterr().err
    assert "02_fails.ipynb failed" in err and "RuntimeError" in err and "boom in cell 3" in err
    done = nbformat.read(out / "01_ok.ipynb", as_version=4)
    assert "n is 7" in done.cells[-1].outputs[0]["text"]  # the parameter reached it
    assert (out / "01_ok.html").exists() and (out / "02_fails.ipynb").exists()
    assert not (out / "03_never.ipynb").exists()
    assert not list(src.glob("*.html")) and sorted(p.name for p in src.iterdir()) == ["01_ok.ipynb", "02_fails.ipynb", "03_never.ipynb"]


def test_report_rejects_a_parameter_no_notebook_declares(tmp_path, capsys):
    src = tmp_path / "notebooks"
    src.mkdir()
    _notebook(src / "01_ok.ipynb", "print(n)")
    params = tmp_path / "p.yaml"
    params.write_text("epochz: 3\n")
    assert run_report(params_file=params, out_dir=tmp_path / "r", notebooks_dir=src) == 2
    assert "epochz" in capsys.readouterr().err
