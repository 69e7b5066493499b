"""Hunt 26 (eg): upgrades across this session's changes. What the release at the session's start (27b1bf2, extracted
by helpers.previous_version_code and run in a subprocess) wrote, read by this one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from psycopg import sql

from archive_pipeline_tests.helpers import previous_version_code
from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env

PREVIOUS = "27b1bf2"  # the release at the session's start
DAY = "2024-03-10"
# The shape-node limits, scaled down from 1,000,000 (both releases) so a table at the edge is built in a second; the
# walk's own limit is kept at whatever distance this release puts it from the manifest's.
SCALED = 20_000
# the old release's command line with its manifest limit scaled alike (its only limit: it had no walk bound)
_PREVIOUS_CLI = ("import sys; import archive_pipeline.core.manifest as m; m.MAX_SHAPE_NODES = int(sys.argv[1]); "
                 "from archive_pipeline.cli import main; sys.argv = ['archive-pipeline', *sys.argv[2:]]; main()")


def previous_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``archive-pipeline *args`` as the release at the session's start runs it (limits scaled: SCALED)."""
    env = {**env, "PYTHONPATH": previous_version_code(PREVIOUS)}
    return subprocess.run([sys.executable, "-c", _PREVIOUS_CLI, str(SCALED), *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd="/tmp")


def test_a_table_the_previous_release_archived_within_the_manifest_limit_is_refused_by_every_command(
        pg, s3, bucket, conn, schema, tmp_path, monkeypatch):
    """**Scenario:** a table with 624 columns of a 1,600-field composite type (999,024 shape nodes: within the
    1,000,000 a manifest records, ``manifest.MAX_SHAPE_NODES``) and 976 plain columns (the day column, a domain
    column, ints), archived every night by the release at the session's start: green, and ``compare`` says
    "equal". The user upgrades and runs ``archive-pipeline archive --day 2024-03-10`` (and ``compare``) as before.
    (Measured at that real size: the previous release archives the day and compares it equal; this one exits 2 on
    both. The test scales both limits down to 20,000 so the table is built in a second: 200 columns of a 99-field
    composite = 20,000 shape nodes, plus the day column and a domain column.)

    **Now:** every command that describes the table refuses it, exit 2: "table ...: the type of column 'c1' unfolds
    to more than 1,000,000 nodes (...), more than an archive records". ``source.bounded_walk`` (source.py:475, called
    by ``describe_relation`` at source.py:1231) counts the type walk's nodes of *every* column, those without any
    composite too (the day column, a domain column's base type: up to 64 each), against ``MAX_TYPE_NODES``, which
    equals ``MAX_SHAPE_NODES``; but a manifest counts only the shape nodes of the columns holding a composite
    (``manifest._folded``, manifest.py:256), which the previous release wrote. So the days it archived are stranded:
    no archive (skip), compare, list --check-source, verify --deep or prune of them runs any more. And the message
    is false twice over: the archive did record it, and that column's own type is 1,601 nodes, not over a million.

    **Should:** what a manifest may record is what the source accepts: this release archives (skips) and compares
    the day the previous one archived. Fix idea: count in ``bounded_walk`` only the columns whose type holds a
    composite (as ``composite_shapes`` keeps them), or give the walk's limit the room the other columns can take
    (1,600 columns x 64 steps), and name the column only where its own type is over the limit."""
    from archive_pipeline.core import manifest, source

    gap = source.MAX_TYPE_NODES - manifest.MAX_SHAPE_NODES  # (0 now)
    monkeypatch.setattr(manifest, "MAX_SHAPE_NODES", SCALED)
    monkeypatch.setattr(source, "MAX_TYPE_NODES", SCALED + gap)
    q = lambda text: conn.execute(sql.SQL(text).format(s=sql.Identifier(schema)))  # noqa: E731
    q("CREATE TYPE {s}.c AS (" + ", ".join(f"f{i} int" for i in range(99)) + ")")  # 100 shape nodes a column
    q("CREATE DOMAIN {s}.qty AS int")
    columns = ["at date NOT NULL", "q {s}.qty", *(f"c{i} {{s}}.c" for i in range(200))]  # 20,000 shape nodes
    q("CREATE TABLE {s}.t (" + ", ".join(columns) + ")")
    conn.execute(sql.SQL("INSERT INTO {} (at, q, c0) VALUES ('2024-03-10', 1, %s), ('2024-03-10', 2, NULL)").format(
        sql.Identifier(schema, "t")), ("(1" + "," * 98 + ")",))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [dict(name=f"{schema}.t", day_column="at", start_date=DAY)]}))
    env = _env(pg, s3, bucket, config)
    before = previous_cli(env, "archive", "--day", DAY, "--json")
    assert before.returncode == 0, before.stderr + before.stdout
    assert json.loads(before.stdout)["days"][0]["status"] == "archived", before.stdout
    assert previous_cli(env, "compare", "--day", DAY).returncode == 0

    again = cli(env, "archive", "--day", DAY, "--json")
    assert again.returncode == 0, (
        f"this release refuses the day the previous one archived (exit {again.returncode}): {again.stderr.strip()}")
    assert json.loads(again.stdout)["days"][0]["status"] == "skipped", again.stdout
    compared = cli(env, "compare", "--day", DAY)
    assert compared.returncode == 0 and "equal" in compared.stdout, compared.stderr + compared.stdout


def test_the_walk_bound_and_the_manifest_limit_count_the_same_nodes_at_the_edge(conn, schema, monkeypatch):
    """The class of the test above, at the limit's edge itself: a table whose columns holding a composite (plain, a
    domain over it, an array of it) have 302 shape nodes, beside columns without one (a date, a domain, an array, a
    range, 100 ints) whose walk nodes a manifest does not record. With both limits at 302, the source describes it
    and its manifest encodes; at 301, both refuse it, the source naming the table and the count together (no one
    column is over the limit alone, so none is named)."""
    from archive_pipeline.core import manifest, source
    from archive_pipeline.core.errors import SourceError

    conn.execute(f"CREATE TYPE {schema}.c AS (" + ", ".join(f"f{i} int" for i in range(99)) + ")")  # 100 nodes
    conn.execute(f"CREATE DOMAIN {schema}.dc AS {schema}.c")  # 101
    conn.execute(f"CREATE DOMAIN {schema}.qty AS int")
    plain = ["at date", f"q {schema}.qty", "a int[]", "r int4range", *(f"i{i} int" for i in range(100))]
    conn.execute(f"CREATE TABLE {schema}.w (" + ", ".join([*plain, f"c {schema}.c", f"d {schema}.dc",
                                                             f"e {schema}.c[]"]) + ")")

    def manifest_of(table) -> dict:
        return {"table": f"{schema}.w", "day": DAY, "columns": [
            {"name": c.name, "shape": [{"at": at, "type": kind, **({"fields": list(f)} if f is not None else {})}
                                       for at, kind, f, _ in c.shape]} for c in table.columns if c.shape]}

    for limit in (302, 301):
        monkeypatch.setattr(manifest, "MAX_SHAPE_NODES", limit)
        monkeypatch.setattr(source, "MAX_TYPE_NODES", limit)
        if limit == 302:
            described = source.describe_table(conn, f"{schema}.w", "at")
            assert sum(len(c.shape) for c in described.columns) == 302
            manifest.encode_manifest(manifest_of(described))
            continue
        with pytest.raises(manifest.ManifestTooLargeError):
            manifest.encode_manifest(manifest_of(described))
        with pytest.raises(SourceError) as refused:
            source.describe_table(conn, f"{schema}.w", "at")
        message = str(refused.value)
        assert f"{schema}.w" in message and "302 nodes together" in message and "3 columns" in message, message
        assert "column 'c'" not in message and "column 'd'" not in message, message
