"""Hunt 26 (ds): sizes and counts at scale, time and memory staying bounded: a manifest recording a composite of
composites (a composite type at PostgreSQL's 1,600 fields, each field a small composite). Work is asserted by
counted steps, never by a clock (performance is measured in bench/)."""

from __future__ import annotations

import datetime as dt
import sys

import pytest

DAY = dt.date(2024, 3, 10)


def _encoding_steps(manifest: dict) -> int:
    """The lines of manifest.py run to encode ``manifest``: the work of encoding it, counted without a clock (the
    suite asserts no wall-clock limit: a loaded 2-core machine must not make it fail)."""
    from archive_pipeline.core import manifest as module

    steps = 0

    def count(frame, event, arg):
        nonlocal steps
        steps += event == "line"
        return count

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg: count if frame.f_code.co_filename == module.__file__ else None)
    try:
        module.encode_manifest(manifest)
    finally:
        sys.settrace(previous)
    return steps


def _panels_manifest(conn, schema: str, fields: int) -> dict:
    """A manifest recording two columns of a composite ``panel<fields>`` of ``fields`` fields, each a composite
    ``reading (value int, unit int)``, their shapes as the catalog walk reads them."""
    from archive_pipeline.core.source import describe_table

    conn.execute(f"CREATE TYPE {schema}.panel{fields} AS "
                 f"({', '.join(f'f{i} {schema}.reading' for i in range(fields))})")
    conn.execute(f"CREATE TABLE {schema}.ev{fields} (id bigint, at date, p {schema}.panel{fields}, "
                 f"q {schema}.panel{fields})")
    table = describe_table(conn, f"{schema}.ev{fields}", "at")
    columns = [{"name": c.name, "shape_modifiers": True,
                "shape": [{"at": at, "type": kind, **({"fields": list(names)} if names is not None else {})}
                          for at, kind, names, _ in c.shape]} for c in table.columns if c.shape]
    assert sum(len(c["shape"]) for c in columns) == 2 * (1 + 3 * fields)
    return {"table": f"{schema}.ev{fields}", "day": DAY.isoformat(), "columns": columns}


def test_folding_a_composite_of_composites_into_the_manifest_takes_steps_linear_in_its_nodes(conn, schema):
    """Scenario: a table whose rows carry columns of a composite type ``panel`` of many fields (PostgreSQL allows
    1,600), each field itself a small composite ``reading (value int, unit int)``: a composite of composites, each
    column's shape 1 + 3 x fields nodes. The day is archived: ``manifest.encode_manifest`` folds the shapes.

    Now: ``_folded`` -> ``_fold_nodes`` scans, for every node, every composite root found so far
    (``any(_below(node["at"], root) for root in roots)``) and, for every root, every node again to build ``below``:
    nodes x roots, quadratic. Twelve columns of 1,600 fields (57,612 nodes, under 6% of MAX_SHAPE_NODES) took 70 s
    to fold on this 2-core machine, a table near the limit days.

    Should: encoding takes steps linear in the shapes' nodes: four times the fields, about four times the steps
    (counted as the lines manifest.py runs, not timed), where quadratic made it sixteen. Fix idea: in
    ``_fold_nodes`` group the nodes under their root in one pass instead of scanning roots and nodes per root."""
    conn.execute(f"CREATE TYPE {schema}.reading AS (value int, unit int)")
    small, large = (_encoding_steps(_panels_manifest(conn, schema, fields)) for fields in (50, 200))
    assert large < 6 * small, f"{small:,} steps for 50 fields, {large:,} for 200: not linear in the nodes"


def test_a_manifest_past_max_shape_nodes_is_refused_before_its_shapes_are_folded(conn, schema, monkeypatch):
    """Scenario: a table whose composite shapes hold more nodes than MAX_SHAPE_NODES (here lowered to 500, for
    two columns of a 200-field composite of composites: 1,202 nodes).

    Now: ``_folded`` folds every shape first and counts the nodes afterwards: a table past the limit is refused
    only after the folding (quadratic, days near the limit) that its refusal makes worthless.

    Should: refused (ManifestTooLargeError naming the table, the day and the limit) before any shape is folded.
    Fix idea: count the nodes (``sum(len(shape))``) and refuse before folding."""
    from archive_pipeline.core import manifest as module

    conn.execute(f"CREATE TYPE {schema}.reading AS (value int, unit int)")
    manifest = _panels_manifest(conn, schema, 200)
    monkeypatch.setattr(module, "MAX_SHAPE_NODES", 500)
    monkeypatch.setattr(module, "_fold_nodes", lambda *a: pytest.fail("folded before refusing past the limit"))
    with pytest.raises(module.ManifestTooLargeError) as refused:
        module.encode_manifest(manifest)
    message = str(refused.value)
    assert f"{schema}.ev200" in message and DAY.isoformat() in message and "1,202" in message and "500" in message


def test_a_column_whose_type_unfolds_past_the_bound_is_refused_by_name_before_its_types_are_walked(
        conn, schema, monkeypatch):
    """Scenario: a column of a type nesting each composite twice in the next (``t1 (a t0, b t0)``, ``t2 (a t1,
    b t1)``...): its nodes double per level, 2**64 within the catalog walk's depth bound; here 10 levels (2,047
    nodes) against MAX_TYPE_NODES lowered to 1,000.

    Now: every query on ``source._TYPE_WALK`` (inner types, shapes, domains) walks the whole tree: hours and the
    server's disk for a deep one, before the manifest's MAX_SHAPE_NODES refuses it.

    Should: describing the table refuses it (a SourceError naming the table, the column and the limit) after
    walking at most the limit's nodes. Fix idea: a walk LIMITed to the bound first (PostgreSQL walks a recursive
    query only as far as it is read)."""
    from archive_pipeline.core import source
    from archive_pipeline.core.errors import SourceError

    conn.execute(f"CREATE TYPE {schema}.t0 AS (a int, b int)")
    for level in range(1, 10):
        conn.execute(f"CREATE TYPE {schema}.t{level} AS (a {schema}.t{level - 1}, b {schema}.t{level - 1})")
    conn.execute(f"CREATE TABLE {schema}.deep (id bigint, at date, tree {schema}.t9)")
    assert len(next(c for c in source.describe_table(conn, f"{schema}.deep", "at").columns if c.shape).shape) > 2000
    monkeypatch.setattr(source, "MAX_TYPE_NODES", 1000)
    with pytest.raises(SourceError) as refused:
        source.describe_table(conn, f"{schema}.deep", "at")
    message = str(refused.value)
    assert f"{schema}.deep" in message and "'tree'" in message and "1,000" in message, message


def test_one_change_of_a_composite_nested_in_many_fields_of_one_column_is_told_once_not_once_per_field(
        conn, schema, store, temp_dir):
    """Scenario: a table with one column of a composite type ``panel`` of 400 fields, each a composite ``reading
    (value int, unit int)`` (a composite of composites). A day is archived; then a migration adds a field to
    ``reading`` (``ALTER TYPE reading ADD ATTRIBUTE note int``); the user restores the day (``restore --day D
    --into new``), as the runbook does before a rollback.

    Now: the RestoreError (and a re-run's LateRowsError, deep verification's) is ~50,000 characters:
    ``source.shape_changes`` says one sentence per *way* at which the type differs ("column 'a': the composite
    ...reading at field f0 has the fields (value, unit, note) now, (value, unit) when archived; column 'a': the
    composite ...reading at field f1 ..." 400 times); its grouping (one sentence per change, columns counted: the
    fix for test_hunt7_mz's 1,000 columns of one type) groups by the sentence, which names the way, so the same
    change of the same type inside one column is never grouped. At 1,600 fields it is ~200,000 characters in the
    run's failure event, the command's output and any alert.

    Should: the change said once (the type, its fields now and when archived) with the ways it sits at named up to
    a few and counted, in a bounded size (under 10,000 characters, test_hunt7_mz's bound), still naming the
    table, the day and ``(value, unit, note)``. Fix idea: in ``shape_changes`` key the grouping by (type, fields
    now, fields then) and list the ways (and columns) briefly, as ``names_brief`` does for columns."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.restore import RestoreError, restore_day

    conn.execute(f"CREATE TYPE {schema}.reading AS (value int, unit int)")
    conn.execute(f"CREATE TYPE {schema}.panel AS ({', '.join(f'f{i} {schema}.reading' for i in range(400))})")
    conn.execute(f"CREATE TABLE {schema}.ev (id bigint, at date, a {schema}.panel)")
    conn.execute(f"INSERT INTO {schema}.ev (id, at, a.f0.value) VALUES (1, %s, 7)", (DAY,))
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                     "start_date": DAY.isoformat()}]}).tables[0]
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    conn.execute(f"ALTER TYPE {schema}.reading ADD ATTRIBUTE note int")
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    message = str(refused.value)
    assert "(value, unit, note)" in message and DAY.isoformat() in message, message[:600]
    assert len(message) < 10_000, f"{len(message):,} characters: {message[:400]} ..."
