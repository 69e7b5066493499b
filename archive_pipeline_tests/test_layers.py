"""The layout shows the architecture, and the arrows point down: ``core`` imports nothing above it and
no Dagster; the CLI and the local stack import no Dagster either; ``defs`` (the Dagster layer) is
imported only by ``definitions``; and no module imports one that imports it
back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "archive_pipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
PLAIN = sorted(m for m in MODULES if m.startswith(("archive_pipeline.core", "archive_pipeline.local.local_stack"))
               or m == "archive_pipeline.cli")


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports (an import of a package counts as its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archive_pipeline"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    return found - {module}


def test_core_cli_and_local_stack_import_no_dagster():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PLAIN)
            + "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
            + "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_core_imports_nothing_above_it():
    upward = {m: sorted(i for i in _imports(m) if not i.startswith("archive_pipeline.core") and i != "archive_pipeline")
              for m in MODULES if m.startswith("archive_pipeline.core")}
    assert not {m: i for m, i in upward.items() if i}


def test_only_definitions_and_the_demo_import_the_dagster_layer():
    users = {m for m in MODULES if not m.startswith("archive_pipeline.defs")
             and any(i.startswith("archive_pipeline.defs") for i in _imports(m))}
    assert users <= {"archive_pipeline.definitions"}, users


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, f"import cycles: {sorted({' -> '.join(c) for c in cycles})[:5]}"
