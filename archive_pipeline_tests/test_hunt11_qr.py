"""Hunt 11 (qr): a review of the newest fixes (store ETags, retention_assets' removal proof, lifecycle's empty-day
removal, restore's refusals). Real PostgreSQL and moto S3 over HTTP. Each test fails on the current code because of
a bug."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions

DAY = dt.date(2024, 3, 10)
DAYS = [dt.date(2024, 3, 9), DAY, dt.date(2024, 3, 11)]


def _run(conn, schema: str, statement: str) -> None:
    conn.execute(statement.replace("S.", sql.Identifier(schema).as_string(conn) + "."))


def _naming_table(conn, schema: str) -> None:
    """``S.ev`` with day tables ``ev_YYYYMMDD`` inheriting from it, 5 rows on each of DAYS."""
    _run(conn, schema, "CREATE TABLE S.ev (id int, at timestamptz NOT NULL, note text)")
    for i, day in enumerate(DAYS):
        _run(conn, schema, f"CREATE TABLE S.ev_{day:%Y%m%d} () INHERITS (S.ev)")
        _run(conn, schema, f"INSERT INTO S.ev_{day:%Y%m%d} SELECT {i} * 100 + g, '{day} 00:00+00'::timestamptz + g * "
                           "interval '1 min', 'n' || g FROM generate_series(1, 5) g")


def _failures(result) -> list[str]:
    said = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            said.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return said


def test_the_removal_job_of_a_naming_mode_day_it_detached_already_is_not_refused_as_inheriting_from_nothing(
        conn, schema, archive_env):
    """A naming-mode table (day tables ``ev_YYYYMMDD`` inheriting from ``S.ev``), retention ``detach``. The
    ``Remove_`` job removes 2024-03-10: ``ev_20240310`` is detached (it keeps its rows, "that is what detach
    means", and the manifest is marked done). The same partition of ``Remove_`` is launched again (a backfill over a
    range, a re-execution of the run).

    What happens: ``_removing`` (hunt-11 qp fix) takes a "done" day whose source shows rows again
    (``rows_after_removal`` > 0: the detached day table's own rows) for a day restored into the source, so it calls
    ``check_removable``, which fails "… inherits from no table, so there is nothing to detach it from: use retention
    action 'drop'": a removal already done is told as a configuration to change (core ``remove_day``, ``prune``,
    says "already removed").

    What should happen: the run succeeds as the day's removal already done (already_removed), as before the fix.
    Fix idea: in ``_removing`` compute ``back`` as lifecycle does: not for a day table ``still_detached``."""
    _naming_table(conn, schema)
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(), "format": "jsonl",
         "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"},
         "retention": {"keep_days": 1, "action": "detach"}}]})
    defs = build_definitions(config)
    remove = defs.resolve_job_def(f"Remove_{schema}_ev")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        first = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        assert first.success, _failures(first)
        again = remove.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
    assert again.success, _failures(again)


def test_an_empty_days_own_partition_that_a_view_keeps_from_being_dropped_is_not_removed_as_nothing(
        conn, schema, store):
    """A declaratively partitioned table, retention ``drop``; 2024-03-10 has its own partition ``ev_20240310``,
    empty (no event that day), and archived empty (0 rows). A report view reads that partition
    (``CREATE VIEW S.day_report AS SELECT * FROM S.ev_20240310``). ``prune`` (``remove_day``) of the day.

    What happens: ``_removable`` refuses the drop (a view depends on the partition: the error a day with rows
    gets, naming the view and what to do), but the hunt-11 qq fix turns ANY refusal of an empty archived day into
    ``Removal(nothing=True)``: ``prune`` lists the day "no data", the Dagster removal materializes it as removed
    (0 rows, relation ''), the retention schedule never asks again, and the partition stays for good, nobody told
    why.

    What should happen: "nothing to remove" only where the day has no partition (or table) of its own; a
    partition that exists is dropped, or its drop is refused with the usual RemovalRefused naming the view.
    Fix idea: in lifecycle._remove_day take the ``nothing`` path only for the refusal of ``_target`` that says no
    partition holds the day (no children), not for every RemovalRefused."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.lifecycle import RemovalRefused
    from archive_pipeline.core.lifecycle import remove_day

    _run(conn, schema, "CREATE TABLE S.ev (id int, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)")
    for day in DAYS:
        _run(conn, schema, f"CREATE TABLE S.ev_{day:%Y%m%d} PARTITION OF S.ev FOR VALUES FROM ('{day} 00:00+00') "
                           f"TO ('{day + dt.timedelta(1)} 00:00+00')")
    _run(conn, schema, "INSERT INTO S.ev VALUES (1, '2024-03-09 10:00+00', 'a'), (2, '2024-03-11 10:00+00', 'b')")
    _run(conn, schema, "CREATE VIEW S.day_report AS SELECT * FROM S.ev_20240310")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAYS[0], format="jsonl",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    assert archive_partition(conn, spec, DAY, store).rows == 0
    try:
        removal = remove_day(conn, spec, DAY, store)
    except RemovalRefused as exc:
        assert "day_report" in str(exc), exc  # refused, naming the view: right
        return
    left = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".ev_20240310',)).fetchone()[0]
    assert not left, (f"the day's partition was neither dropped nor its drop refused: remove_day answered "
                      f"nothing={removal.nothing} relation={removal.relation!r} rows={removal.rows}")


def test_naming_mode_restore_into_original_of_a_day_table_with_a_column_of_its_own_is_not_refused(
        conn, schema, store, temp_dir):
    """A naming-mode table ``S.ev (id, at, note)``; the day table ``ev_20240310`` was created with a column of its
    own (``CREATE TABLE S.ev_20240310 (batch int) INHERITS (S.ev)``: a loader's bookkeeping, never part of
    ``S.ev``), 5 rows. Archived, removed by retention ``drop``; the user then restores the day with
    ``restore --day 2024-03-10 --into original``. Nothing was renamed or dropped since.

    What happens: ``_refuse_hidden_columns`` (hunt-11 qp fix) checks every archived column against the parent's
    columns and refuses "the day table … goes back under S.ev, which has no column(s) ['batch'] the archive has
    (renamed or dropped since): their values would not show through S.ev; nothing was restored", remedy "give
    S.ev the column(s) ['batch'] again": false (S.ev never had it, and ``batch`` never showed through S.ev), and
    the remedy would change the application's table. The same for a day table under a second parent
    (``INHERITS (S.ev, S.tagged)``): the second parent's columns are "missing" too.

    What should happen: the day table is re-created as it was (``batch`` its own column again, under S.ev) and the
    5 rows restored. Fix idea: only refuse a column the parent had when archived (record the inherited columns,
    attinhcount > 0, in the manifest's table definition), or one whose values the day table did show through it."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day

    _run(conn, schema, "CREATE TABLE S.ev (id int, at timestamptz NOT NULL, note text)")
    _run(conn, schema, "CREATE TABLE S.ev_20240310 (batch int) INHERITS (S.ev)")
    _run(conn, schema, "INSERT INTO S.ev_20240310 SELECT g, '2024-03-10 00:00+00'::timestamptz + g * "
                       "interval '1 min', 'n' || g, 7 FROM generate_series(1, 5) g")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl",
                     partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 5
    remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    assert conn.execute("SELECT to_regclass(%s)", (f'"{schema}".ev_20240310',)).fetchone()[0] is None
    try:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        raise AssertionError(f"restore into original refused: {exc}") from None
    assert conn.execute(sql.SQL("SELECT count(*), min(batch) FROM {}").format(
        sql.Identifier(schema, "ev_20240310"))).fetchone() == (5, 7)


def test_restore_into_original_beside_a_day_table_detached_outside_retention_does_not_say_dropped_by_retention(
        conn, schema, store, temp_dir):
    """A naming-mode table (day tables ``ev_YYYYMMDD`` inheriting from ``S.ev``), retention ``detach`` configured
    but 2024-03-10 never removed: its manifest has no ``removed`` mark. Its day table ``ev_20240310`` (5 rows, the
    archived ones) is detached from ``S.ev`` by other means (a DBA's ``ALTER TABLE … NO INHERIT``; or a removal
    run of the day that detaches it while this restore downloads, the race ``_refuse_detached_day_table``'s own
    comment names). The user runs ``restore --day 2024-03-10 --into original``.

    What happens: the hunt-11 qp fix says "made since" of every day table whose manifest's mark is not a detach,
    the mark-less manifest too: "… ev_20240310, the name of the table that held 2024-03-10 (dropped by
    retention), is a table made since that is not under S.ev, holding 5 row(s) …": false (the day was never
    dropped; this is the very table that held it, with its rows), and it points the user at renaming or dropping
    the day's only rows in the source.

    What should happen: the "dropped by retention … made since" wording only where the manifest records a drop
    (``removed.action == 'drop'``); otherwise the detached-table refusal (the day table still holds the day:
    attach it again, with the statement). Fix idea: test ``== 'drop'`` instead of ``!= 'detach'``."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    _naming_table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAYS[0], format="jsonl",
                     partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "detach"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 5
    _run(conn, schema, "ALTER TABLE S.ev_20240310 NO INHERIT S.ev")
    try:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        said = str(exc)
    else:
        raise AssertionError("restored into a detached day table beside its own 5 rows")
    assert "dropped by retention" not in said and "made since" not in said, said
    assert "ATTACH" in said.upper() or "INHERIT" in said.upper(), said


def test_a_component_prefix_template_filtering_an_unset_variable_is_still_refused(monkeypatch):
    """A defs.yaml gives ``asset_key_prefix: "{{ env.ARCHIVE_REGION | lower }}"`` (each regional location sets its
    region; one forgot to). Since the qh/qn fixes an attribute naming an unset variable fails the load ("it would
    render as the text 'None'"). The hunt-11 qo fix narrowed the check to a bare ``{{ env.X }}``, to let
    ``{{ env.X or 'eu' }}`` through.

    What happens: a filter or an operator that is no fallback (``| lower``, ``| upper``, ``~ '_eu'``, and
    ``| default('eu')`` without ``true``, which keeps None) is not refused any more: the location loads with the
    asset key prefix ``none`` (Jinja renders None through ``lower``), silently sharing every asset key with any
    other location that forgot its region: the very case the check exists for.

    What should happen: the load is refused naming ARCHIVE_REGION, as for ``{{ env.ARCHIVE_REGION }}``. Fix idea:
    render the template and refuse a result that holds None/'None'/'none' where the variable is unset, or exempt
    only the fallback forms (``or``, ``default(…, true)``, ``env('X', 'eu')``)."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "b")
    monkeypatch.delenv("ARCHIVE_REGION", raising=False)
    attributes = ("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
                  "asset_key_prefix: \"{{ env.ARCHIVE_REGION | lower }}\"\ncheck_source: false\n")
    try:
        component = ArchiveTablesComponent.resolve_from_yaml(attributes)
    except Exception as exc:  # noqa: BLE001 - refused: right, if it names the variable
        assert "ARCHIVE_REGION" in str(exc), exc
        return
    prefix = component.archive_config().tables[0].key_prefix
    raise AssertionError(f"loaded with asset key prefix {prefix!r} for an unset ARCHIVE_REGION")
