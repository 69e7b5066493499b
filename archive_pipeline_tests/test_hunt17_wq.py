"""Hunt 17 (wq): a review of the fresh naming-mode fixes (views as day tables, the case / normal-form refusal
folded in Python, per-type day filters, pattern length in characters at load and bytes at discovery, a dot in
the pattern): regressions and holes."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.core.discovery import existing_days, naming_days
from archive_pipeline.core.errors import ArchiveError

D1, D2 = dt.date(2024, 3, 9), dt.date(2024, 3, 10)


def _table(schema: str, pattern: str = "events_%Y%m%d", name: str = "events", **extra) -> dict:
    return {"name": f"{schema}.{name}", "start_date": "2024-03-01", "format": "csv", "compression": "none",
            "partitioning": {"mode": "naming", "pattern": pattern}, **extra}


def _spec(schema: str, pattern: str = "events_%Y%m%d", **extra):
    return parse_config({"tables": [_table(schema, pattern, **extra)]}).tables[0]


def _day_table(conn, schema: str, name: str, rows: list[tuple[int, str]], column_type: str = "timestamptz") -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at " + column_type + ")").format(sql.Identifier(schema, name)))
    for row in rows:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(schema, name)), row)


def test_a_case_refusal_whose_difference_is_in_a_codes_text_does_not_tell_to_set_the_pattern_already_set(
        conn, schema):
    """Legacy day tables named with their weekday, created unquoted by a script: ``CREATE TABLE
    events_20240310_Sun`` -> the catalog holds ``events_20240310_sun`` (PostgreSQL folds unquoted names). The YAML
    says ``pattern: events_%Y%m%d_%a`` (strftime's %a spells 'Sun'). Discovery finds nothing and
    ``_refuse_other_case`` refuses, rightly, but its remedy is built by ``_respelled``, which re-spells only the
    pattern's LITERAL parts as the catalog does: the difference lies in %a's text, so the remedy says "set the
    table's partitioning pattern in the YAML configuration to 'events_%Y%m%d_%a'" -- the very pattern already
    set. The user sets it, nothing changes, and no pattern can name these tables (no strftime code spells a
    lower-case weekday).

    Should: a remedy that can work: never the pattern already configured; where the catalog's spelling differs
    in a code's text, say so (the code and the catalog's text) and tell to rename the tables (ALTER TABLE ...
    RENAME TO their quoted names) or use a pattern without that code. Fix idea: in _refuse_other_case, compare
    _respelled(...) with the pattern; if equal, name the code whose text differs and give the rename remedy."""
    conn.execute(sql.SQL("CREATE TABLE {}.events_20240310_Sun (id int, at timestamptz)").format(
        sql.Identifier(schema)))
    spec = _spec(schema, "events_%Y%m%d_%a")
    with pytest.raises(ArchiveError) as refused:
        naming_days(conn, spec)
    assert "events_20240310_sun" in str(refused.value)
    assert "'events_%Y%m%d_%a'" not in (refused.value.remedy or ""), refused.value.remedy


def test_a_new_day_table_series_is_not_refused_for_another_configured_tables_day_tables(conn, schema):
    """One configuration archives two legacy day-table series of one schema, each named exactly by its own
    pattern: ``<s>.events`` (``events_%Y%m%d``, lower-case tables with days) and a partner's newer feed
    ``<s>.partner_events`` (``Events_%Y%m%d``, quoted tables, none created yet -- or all of them let go by retention's
    drop). Discovery of partner_events finds none of its own, so ``_refuse_other_case`` folds the schema's names and finds
    ``events_20240310`` -- the OTHER configured table's day table -- and refuses partner_events with a
    SourceError: its sensor tick, ``list`` and ranged runs fail for ever, and the remedy says "set the table's
    partitioning pattern ... to 'events_%Y%m%d'", which would make the two configured tables archive (and
    retention remove) the same day tables.

    Should: a valid configuration is not refused: the partner_events series simply has no day yet ([]), at most a
    warning naming the lookalikes; never a remedy pointing at another configured table's tables. Fix idea: a
    lookalike that some other configured table's pattern names exactly is not a misspelling (pass the
    configuration's patterns of the schema to naming_days), or make the lookalike a warning, not a refusal,
    once the table has been archived before."""
    _day_table(conn, schema, "events_20240310", [(1, "2024-03-10 10:00Z")])
    config = parse_config({"tables": [_table(schema), _table(schema, "Events_%Y%m%d", name="partner_events")]})
    lower, upper = config.tables
    assert naming_days(conn, lower) == [lower.period(D2)]
    assert existing_days(conn, upper, [D1, D2]) == []


def test_a_day_table_the_role_may_not_read_does_not_make_its_neighbours_whole_tables_the_day(conn, schema, pg):
    """The archiving role may read every day table but one (``events_20240309``: SELECT revoked, a day held back
    for a legal hold). ``events_20240310`` holds only a stray row of 2024-03-11 (written into the wrong day's
    table): asked alone, ``existing_days`` rightly says 2024-03-10 has no data (its day filter finds none). Asked
    together with 2024-03-09, as the sensor and ``list`` ask about every day since start_date, ``_day_table_shapes``
    describes ONE table per (kind, day column type) group -- the unreadable one -- and where that description
    fails (no SELECT) every table of the group gets the filter TRUE: 2024-03-10's stray row makes it "a day with
    data" (the sensor requests it for ever; the run archives no row of it). Whether a day has data again depends
    on which days are asked about together -- what the per-type describe was made to end.

    Should: 2024-03-10 is not a day with data whichever days are asked with it; 2024-03-09 is reported as failed
    (its probe: no SELECT). Fix idea: in _day_table_shapes, when _described fails for the group's first table,
    describe the next table of the group (or build the filter from the catalog's type alone, without needing
    the table to be readable)."""
    role = f"{schema}_wq"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        _day_table(conn, schema, "events_20240309", [(1, "2024-03-09 10:00Z")])
        _day_table(conn, schema, "events_20240310", [(2, "2024-03-11 10:00Z")])
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {t} TO {r}").format(
            s=sql.Identifier(schema), r=sql.Identifier(role), t=sql.Identifier(schema, "events_20240310")))
        spec = _spec(schema, day_column="at")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
            assert existing_days(reader, spec, [D2], failed={}) == []  # alone: right
            failed: dict = {}
            together = existing_days(reader, spec, [D1, D2], failed=failed)
            assert list(failed) == [spec.period(D1)]
            assert together == [], "2024-03-10 holds only a stray row of 2024-03-11"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {r}; DROP ROLE {r}").format(r=sql.Identifier(role)))


def test_a_naming_tables_schema_spelled_in_another_case_is_refused_not_a_quiet_no_data(conn, schema):
    """The day tables live in schema ``<s>`` (created unquoted, so lower case); the YAML says
    ``name: <S>.events`` (the schema in upper case, as the DBA writes it in SQL) with ``pattern: events_%Y%m%d``.
    The pattern itself is right, and the new refusals exist exactly so that a naming table whose day tables are
    there under another spelling is not "0 of them with data" for ever -- but they only look in the configured
    schema: ``naming_days`` and ``existing_days`` return [] without a word (the sensor finds no day for ever,
    ``compare``/``list`` show nothing), and an explicit ``archive --day`` says only "table '<S>.events_20240310'
    does not exist", never that schema ``<s>`` holds it (a configured table's name gets "differs only in case"
    hints elsewhere).

    Should: refused with a typed error naming the catalog's schema ``<s>`` (and its day table) and the name to
    configure, as a pattern spelled in another case is. Fix idea: in naming_days, when nothing is found and the
    configured schema does not exist, look its name up case/normal-form folded (lookalike_relations /
    pg_namespace) and refuse, naming it."""
    _day_table(conn, schema, "events_20240310", [(1, "2024-03-10 10:00Z")])
    spec = _spec(schema.upper())
    assert not conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)",
                            (schema.upper(),)).fetchone()[0]
    with pytest.raises(ArchiveError) as refused:
        naming_days(conn, spec)
    assert f"'{schema}'" in str(refused.value) or f"{schema}.events_20240310" in str(refused.value)
