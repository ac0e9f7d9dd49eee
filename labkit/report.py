"""Execute the notebooks in order with papermill into a report folder, and export HTML."""
from __future__ import annotations

import sys
from pathlib import Path

from .config import NOTEBOOKS_DIR, PARAMS_DIR


def load_params(params_file) -> dict:
    """The YAML parameters: top-level keys go to every notebook that declares them; a key named
    after a notebook (e.g. `03_evaluate_10_runs:`) holds parameters for that notebook only."""
    import yaml

    if params_file is None:
        return {}
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{params_file}: expected a mapping of parameter names to values")
    return data


def notebook_params(nb_path: Path, declared, params: dict) -> dict:
    """The subset of `params` that this notebook declares (`declared`: its parameter names)."""
    chosen = {k: v for k, v in params.items() if k in declared and not isinstance(v, dict)}
    chosen.update({k: v for k, v in (params.get(nb_path.stem) or {}).items() if k in declared})
    unknown = set((params.get(nb_path.stem) or {})) - set(declared)
    if unknown:
        raise ValueError(f"{nb_path.name} declares no parameter(s) {sorted(unknown)}")
    return chosen


def export_html(nb_path: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    html = nb_path.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_report(params_file=None, out_dir=None, only=None, notebooks_dir=NOTEBOOKS_DIR) -> int:
    """Run every notebook (or `only` those named) into out_dir; stop at the first failure."""
    import papermill as pm

    params_file = params_file if params_file is not None else PARAMS_DIR / "full.yaml"
    params = load_params(params_file)
    out_dir = Path(out_dir).resolve()  # notebooks run with cwd=out_dir: relative paths would nest
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if nb.stem in only or nb.name in only]
    print(f"report: {len(notebooks)} notebook(s), parameters from {params_file}, into {out_dir}", flush=True)
    declared = {nb: set(pm.inspect_notebook(str(nb))) for nb in notebooks}
    stray = {k for k, v in params.items() if not isinstance(v, dict)} - set().union(*declared.values())
    if stray:
        print(f"report: {params_file} sets {sorted(stray)}, which no notebook declares", file=sys.stderr)
        return 2
    for nb in notebooks:
        target = out_dir / nb.name
        chosen = notebook_params(nb, declared[nb], params)
        if "out_dir" in declared[nb] and "out_dir" not in chosen:
            chosen["out_dir"] = str(out_dir / nb.stem)  # the report's artefacts stay in its folder
        print(f"--- {nb.name} {chosen}", flush=True)
        try:
            pm.execute_notebook(str(nb), str(target), parameters=chosen, cwd=str(out_dir),
                                progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            print(f"\nreport stopped: {nb.name} failed in cell {e.exec_count} with {e.ename}: {e.evalue}\n"
                  f"{''.join(e.traceback[-3:]) if e.traceback else ''}\n"
                  f"the executed notebook (with the error) is {target}; earlier notebooks stay in {out_dir}",
                  file=sys.stderr)
            export_html(target)
            return 1
        html = export_html(target)
        print(f"    wrote {target.name} and {html.name}", flush=True)
    print(f"report ready: {out_dir}", flush=True)
    return 0
