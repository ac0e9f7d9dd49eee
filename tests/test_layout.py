"""The package's shape: every import within labkit runs downward, in the order labkit/__init__.py lists the modules."""
from __future__ import annotations

import ast
import re

from labkit.config import PACKAGE_DIR


def _order() -> list[str]:
    """Module names in the order of the map in labkit/__init__.py."""
    doc = ast.get_docstring(ast.parse((PACKAGE_DIR / "__init__.py").read_text()))
    return [m.group(1) for line in doc.splitlines() if (m := re.match(r"\s{4}(\w+)\s{2,}", line))]


def _imports(module: str) -> set[str]:
    """The labkit modules a module imports, at its top or inside functions (relative or absolute)."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("labkit."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("labkit."))
    return found - {module}


def test_the_map_lists_every_module_once():
    modules = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem not in ("__init__", "__main__"))
    order = _order()
    assert sorted(order) == modules and len(set(order)) == len(order)


def test_every_import_runs_downward():
    """A module imports only modules listed above it in the map: no cycles, the CLI on top."""
    order = _order()
    rank = {m: i for i, m in enumerate(order)}
    upward = [f"{m} imports {d}" for m in order for d in sorted(_imports(m)) if d in rank and rank[d] >= rank[m]]
    assert not upward, upward
