"""Arrows point down: the core, the CLI and the local stack import no Dagster, and no module of the
package imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "archive_pipeline"
DAGSTER_LAYER = {"assets", "checks", "component", "definitions", "resources", "retention_assets", "schedules",
                 "sensors", "demo"}
CORE = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in DAGSTER_LAYER | {"__init__"})


def test_core_and_cli_import_no_dagster():
    code = ("import sys\n" + "".join(f"import archive_pipeline.{m}\n" for m in CORE)
            + "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
            + "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archive_pipeline"):
            names = [node.module.split(".", 1)[1]] if "." in node.module else [a.name for a in node.names]
            found.update(n for n in names if (PACKAGE / f"{n}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names
                         if a.name.startswith("archive_pipeline.") and (PACKAGE / f"{a.name.split('.', 1)[1]}.py").exists())
    return found - {module}


def test_no_import_cycles():
    graph = {p.stem: _imports(p.stem) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
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
