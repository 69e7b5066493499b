"""Every PostgreSQL function the product's SQL calls is called as ``pg_catalog.<name>``: a role's search_path that
lists a schema of its own before pg_catalog (``ALTER ROLE ... SET search_path = app, pg_catalog``) otherwise runs
that schema's function of the same name and argument types instead (see test_hunt20_zh), in every statement sent
outside the blocks that set the catalog-first path.

Found by reading the source, not by running it: the string constants that reach a statement (an argument, at any
depth of concatenation, f-string or ``.format``, of ``sql.SQL``, ``execute``, ``executemany`` or ``copy``, or the
value of an upper-case module constant), and in them every ``name(`` that is not qualified, where ``name`` is a
function of pg_catalog on the test's server. Prose (error messages, docstrings) reaches no statement and is not
read. The one exception is ``unnest`` with more than one argument, which PostgreSQL accepts only unqualified (the
ROWS FROM shorthand: it expands it into calls of pg_catalog.unnest itself)."""

from __future__ import annotations

import ast
import pathlib
import re

import archive_pipeline

PACKAGE = pathlib.Path(archive_pipeline.__file__).parent
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "local" not in p.relative_to(PACKAGE).parts)  # (local: the dev stack)
SENDS = {"SQL", "execute", "executemany", "copy"}
CALL = re.compile(r'(?<![\w.$"%{\\])([A-Za-z_][A-Za-z0-9_]*)\(')


def _statement_strings(tree: ast.AST) -> list[ast.Constant]:
    """The string constants of ``tree`` that reach a statement (see the module's docstring)."""
    found: list[ast.Constant] = []

    def strings(node: ast.AST) -> None:
        found.extend(n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in SENDS:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    strings(arg)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.BinOp, ast.JoinedStr)) and \
                all(isinstance(t, ast.Name) and t.id.lstrip("_").isupper() for t in node.targets):
            strings(node.value)
    return found


def _shorthand_unnest(text: str, start: int) -> bool:
    """Whether the ``unnest(`` ending at ``start`` has more than one argument (a comma outside parentheses)."""
    depth = 0
    for char in text[start:]:
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return False
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def test_the_products_sql_calls_postgresqls_functions_by_their_qualified_names(conn):
    functions = {name for (name,) in conn.execute(
        "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace")}
    bare = []
    for path in SOURCES:
        for node in _statement_strings(ast.parse(path.read_text())):
            for match in CALL.finditer(node.value):
                name = match.group(1)
                if name.lower() not in functions or (name.lower() == "unnest" and
                                                     _shorthand_unnest(node.value, match.end())):
                    continue
                bare.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}( in "
                            f"{node.value[max(0, match.start() - 30):match.end() + 30]!r}")
    assert not bare, "functions called by bare name (qualify them with pg_catalog.):\n" + "\n".join(bare)
