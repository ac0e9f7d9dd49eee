"""`labkit run-notebooks`: check a params file against the notebooks, then execute them in order with
papermill into an output folder and export each to HTML.

The params file (YAML) maps a notebook's name (its file name without `.ipynb`, e.g.
`03_evaluate_10_runs:`) to that notebook's parameters; a parameter at the top level goes to every
notebook that declares it. The whole file is checked before anything runs or is written: section
names, parameter names and value types (those the notebook's parameters cell declares). Every problem
is a ParamsError with a one-line message.
"""
from __future__ import annotations

import ast
import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

from .config import NOTEBOOKS_DIR, PARAMS_DIR, display_path
from .safeio import WRITE_PROBLEMS, ReadRefused, read_regular

MAX_PARAMS_BYTES = 1_000_000  # a params file is a few lines; refuse anything absurd unread

# Python type names a parameters cell may declare -> (accepted Python types, words for messages).
_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((float, int), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "list": ((list,), "a list"),
    "dict": ((dict,), "a mapping"),
}


class ParamsError(ValueError):
    """The params file, --only or --out cannot be used; the message is one line."""


def load_params(params_file) -> dict:
    """The params file as a mapping, or ParamsError naming the file (and line, for YAML errors)."""
    import yaml

    try:
        text = read_regular(params_file, MAX_PARAMS_BYTES, "a params file").decode("utf-8")
    except ReadRefused as e:
        raise ParamsError(f"{params_file}: {e.problem}") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{params_file}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:  # a tag such as !!python/object: never constructed
        where = f", line {e.problem_mark.line + 1}" if e.problem_mark else ""
        tag = re.search(r"tag '([^']*)'", str(e.problem or ""))
        what = f"the tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')}" if tag else "a tag"
        raise ParamsError(f"{params_file}{where}: {what} is not allowed (plain values only)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{params_file}{where}: YAML syntax error: {problem}") from None
    if data is None:  # an empty file (or only comments): nothing to set
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{params_file}: expected a mapping of notebook names to their parameters at the top "
                          f"level, found {_kind(data)}")
    return data


def _kind(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _declared_types(info: dict):
    """(accepted types or None for any, words, None allowed) of one parameter from inspect_notebook."""
    name = (info.get("inferred_type_name") or "None").replace(" ", "")
    default = info.get("default") or ""
    documented_none = default == "None" or re.search(r"\bNone\b", info.get("help") or "") is not None
    m = re.fullmatch(r"Optional\[(.+)\]", name)
    if m:
        name, documented_none = m.group(1), True
    names = re.fullmatch(r"Union\[(.+)\]", name).group(1).split(",") if name.startswith("Union[") else name.split("|")
    if "None" in names and len(names) > 1:
        names, documented_none = [n for n in names if n != "None"], True
    if names == ["None"]:  # no annotation: the type of the default value, when it is a literal
        try:
            value = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            return None, "anything", True
        if value is None or type(value).__name__ not in _TYPES:
            return None, "anything", True
        names = [type(value).__name__]
    if any(n not in _TYPES for n in names):  # a type this check does not know: let the notebook judge
        return None, "anything", True
    types = tuple(t for n in names for t in _TYPES[n][0])
    return types, " or ".join(_TYPES[n][1] for n in names), documented_none


def _check_value(value, info: dict) -> str | None:
    """None when `value` fits the parameter, else what is wrong."""
    types, words, none_ok = _declared_types(info)
    if value is None:
        return None if none_ok else f"must be {words}, not null (its default is {info.get('default')})"
    if types is None:
        return None
    if isinstance(value, bool) and bool not in types:  # YAML true is not the integer 1
        return f"must be {words}, not {_kind(value)} {value!r}"
    if not isinstance(value, types):
        return f"must be {words}, not {_kind(value)} {value!r}"
    return None


def _parameters(nb: Path) -> dict:
    import papermill as pm

    try:
        return pm.inspect_notebook(str(nb))
    except Exception as e:  # a notebook that cannot be inspected is the project's defect: say which
        raise ParamsError(f"{nb}: cannot read its parameters ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def check_params(params: dict, params_file, parameters: dict[str, dict]) -> dict[str, dict]:
    """{notebook stem: the parameters it gets} after checking every key and value of `params`
    against `parameters` ({stem: inspect_notebook of that notebook}); ParamsError otherwise."""
    stems = list(parameters)
    valid = ", ".join(stems)
    chosen: dict[str, dict] = {stem: {} for stem in stems}
    sections, globals_ = {}, {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise ParamsError(f"{params_file}: top-level key {key!r} is not a name (sections: {valid})")
        if key.endswith(".ipynb") and key[:-6] in parameters:
            key = key[:-6]
        if key in parameters:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ParamsError(f"{params_file}: section {key!r} must map parameter names to values, "
                                  f"found {_kind(value)}")
            sections[key] = value
        elif isinstance(value, dict) or value is None:
            raise ParamsError(f"{params_file}: section {key!r} names no notebook; {_suggest(key, stems)}"
                              f"the sections are: {valid}")
        else:
            declared_by = [s for s in stems if key in parameters[s]]
            if not declared_by:
                every = sorted(set().union(*map(set, parameters.values())))
                raise ParamsError(f"{params_file}: {key!r} at the top level is neither a notebook section nor a "
                                  f"parameter of any notebook; {_suggest(key, stems + every)}the sections are: {valid}")
            globals_[key] = value
    for key, value in globals_.items():
        for stem in stems:
            if key in parameters[stem]:
                problem = _check_value(value, parameters[stem][key])
                if problem:
                    raise ParamsError(f"{params_file}: {key} (top level, for {stem}) {problem}")
                chosen[stem][key] = value
    for stem, section in sections.items():
        for key, value in section.items():
            if key not in parameters[stem]:
                names = ", ".join(parameters[stem]) or "none"
                raise ParamsError(f"{params_file}: {stem} has no parameter {key!r}; "
                                  f"{_suggest(str(key), parameters[stem])}its parameters are: {names}")
            problem = _check_value(value, parameters[stem][key])
            if problem:
                raise ParamsError(f"{params_file}: {stem}: {key} {problem}")
            chosen[stem][key] = value
    return chosen


def select(notebooks: list[Path], only) -> list[Path]:
    """The notebooks `only` names (stem, file name or number such as "02"), in order; all if None."""
    if not only:
        return notebooks
    picked = set()
    for name in only:
        hits = [nb for nb in notebooks if name in (nb.stem, nb.name, nb.stem.split("_", 1)[0])]
        if not hits:
            raise ParamsError(f"--only {name}: matches no notebook; {_suggest(name, [nb.stem for nb in notebooks])}"
                              f"the notebooks are: {', '.join(nb.stem for nb in notebooks)}")
        picked.update(hits)
    return [nb for nb in notebooks if nb in picked]


def _refuse_source_folder(out_dir, notebooks_dir) -> Path:
    """out_dir resolved; ParamsError when it is (or lies inside) the folder of the source notebooks."""
    out, source = Path(out_dir).resolve(), Path(notebooks_dir).resolve()
    if out == source or source in out.parents:
        raise ParamsError(f"--out {out_dir}: is {'' if out == source else 'inside '}the notebooks folder "
                          f"{display_path(source)}, whose notebooks the executed copies would overwrite; "
                          "choose another folder (default: outputs/notebooks-TIMESTAMP)")
    return out


def check_writable(out: Path, given) -> None:
    """Create the folder `out` (`given` as the user wrote it) and a file in it; ParamsError with
    one line when either cannot be done."""
    if out.exists() and not out.is_dir():
        raise ParamsError(f"--out {given}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".labkit-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = WRITE_PROBLEMS.get(e.errno) or e.strerror or type(e).__name__
        if isinstance(e, FileExistsError):
            why = "a folder on its path is a file"
        raise ParamsError(f"--out {given}: cannot write there ({why})") from None


def export_html(nb_path: Path) -> Path:
    """Write NAME.html beside an executed notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    html = nb_path.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_notebooks(params_file=None, out_dir=None, only=None, notebooks_dir=NOTEBOOKS_DIR) -> int:
    """Check everything, then run every notebook (or `only` those named) into out_dir.

    Returns 0 when all ran, 1 when one failed (the run stops there). Raises ParamsError, before
    anything is executed or written, for an unusable params file, --only or out_dir (the notebooks
    folder itself, a file, under a file, or a folder that cannot be written).
    """
    params_file = Path(params_file) if params_file is not None else PARAMS_DIR / "full.yaml"
    if out_dir is None:
        raise ParamsError("no output folder given")
    given, out_dir = out_dir, _refuse_source_folder(out_dir, notebooks_dir)  # resolved: notebooks run with cwd=out_dir
    params = load_params(params_file)
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise ParamsError(f"{notebooks_dir}: no notebooks (NN_name.ipynb) to run")
    selected = select(notebooks, only)
    parameters = {nb.stem: _parameters(nb) for nb in notebooks}  # the whole file is checked, not only
    chosen = check_params(params, params_file, parameters)  # the sections of the selected notebooks
    check_writable(out_dir, given)  # the first thing written, once everything else is known to be right

    import papermill as pm

    print(f"run-notebooks: {len(selected)} notebook(s), parameters from {params_file}, into {out_dir}", flush=True)
    for nb in selected:
        target = out_dir / nb.name
        these = dict(chosen[nb.stem])
        if "out_dir" in parameters[nb.stem] and "out_dir" not in these:
            these["out_dir"] = str(out_dir / nb.stem)  # the notebooks' artefacts stay in this folder
        print(f"--- {nb.name} {these}", flush=True)
        try:
            pm.execute_notebook(str(nb), str(target), parameters=these, cwd=str(out_dir),
                                progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            print(f"\nrun-notebooks stopped: {nb.name} failed in cell {e.exec_count} with {e.ename}: {e.evalue}\n"
                  f"{''.join(e.traceback[-3:]) if e.traceback else ''}\n"
                  f"the executed notebook (with the error) is {target}; earlier notebooks stay in {out_dir}",
                  file=sys.stderr)
            export_html(target)
            return 1
        html = export_html(target)
        print(f"    wrote {target.name} and {html.name}", flush=True)
    print(f"notebooks ready: {out_dir}", flush=True)
    return 0
