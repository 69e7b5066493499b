"""Hunt 7 (mf): names and keys at the edges of their type, end to end."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, TableSpec, parse_config
from archive_pipeline.core.keys import MANIFEST_SUFFIX, S3_KEY_LIMIT, manifest_key, table_day_key
from archive_pipeline.core.locks import table_day_lock
from archive_pipeline.core.plan import compare_days, day_statuses

DAY = dt.date(2024, 3, 10)


# --- the table-day lock of one table held by another ------------------------------------------------------------

def _names_sharing_a_lock(conn, schema: str) -> tuple[str, str]:
    """Two table names of ``schema`` whose table-day locks PostgreSQL keys alike: the lock's first key is the
    32-bit ``hashtext('archive_pipeline:<schema>.<table>')``, so among a few hundred thousand names two meet."""
    found = conn.execute(
        "SELECT min(g), max(g) FROM generate_series(1, 400000) g "
        "GROUP BY pg_catalog.hashtext('archive_pipeline:' || %s || '.t' || g) HAVING count(*) > 1 "
        "ORDER BY 1 LIMIT 1", (schema,)).fetchone()
    assert found is not None
    return f"t{found[0]}", f"t{found[1]}"


def test_a_run_on_one_table_does_not_lock_out_another_table_of_the_same_day(pg, conn, schema, store, temp_dir):
    """A user archives two tables of the same day in two runs at once (the sensor or a backfill does this all the
    time). The table-day lock is ``pg_try_advisory_lock(hashtext('archive_pipeline:<table>'), <day>)``: a 32-bit
    hash of the name, so two tables whose names hash alike (one pair in 65,000 among a few hundred tables' names
    is enough to meet by chance; here found among ``t1`` .. ``t400000``) share one lock. What happens: while one
    table's day is archived, the other table's run of that day fails "is being archived, removed or restored by
    another run right now" (and its removal and restore likewise), naming a run that has nothing to do with it.
    What should happen: the lock is the table's own (a key that cannot meet another table's, e.g. the table's
    oid or a 64-bit hash with the day in the same key space), and the second table's day is archived."""
    first, second = _names_sharing_a_lock(conn, schema)
    for name in (first, second):
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, name)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10')").format(sql.Identifier(schema, name)))
    spec = TableSpec(name=f"{schema}.{second}", day_column="at", start_date=DAY, format="jsonl")
    with pg.connect() as other, table_day_lock(other, f"{schema}.{first}", DAY):  # the first table's run
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 1


# --- S3's 1,024 bytes and the hours whose keys are longer -------------------------------------------------------

HOURLY = "{prefix}/{schema}.{table}/PAD/{date}/{hour}/{period}.{ext}"


def _hourly(template: str) -> dict:
    return {"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01",
            "granularity": "hourly", "timezone": "Europe/Berlin", "key_template": template}


def test_the_key_length_check_counts_the_repeated_autumn_hours_longer_key(archive_env):
    """A user archives an hourly table in Europe/Berlin under a long key_template (a long literal folder, or a
    long ARCHIVE_S3_PREFIX). The load refuses a table whose keys would pass S3's 1,024 bytes, but it measures
    only the key of the table's first hour. The repeated autumn hour spells ``{hour}`` as ``02+0100`` and
    ``{period}`` as ``2024-10-27T02+0100``: 5 bytes longer each. What happens: a template whose first hour's
    key leaves exactly the room the check asks for loads, and on the last Sunday of October the second 02:00's
    manifest key is 1,027 bytes: AWS refuses the manifest after the data
    object was written, every year, and the hour is left half written. What should happen: the load measures
    the longest key the table can render (the repeated hour's) and refuses the template, naming the table and
    key_template."""
    probe = parse_config({"tables": [_hourly(HOURLY)]}).tables[0]
    first = table_day_key(probe, probe.first_period, "archive")
    pad = S3_KEY_LIMIT - len(".g99999") - len(MANIFEST_SUFFIX) - len(first.encode()) + len("PAD")
    template = HOURLY.replace("PAD", "x" * pad)
    spec = parse_config({"tables": [_hourly(template)]}).tables[0]
    repeated = spec.period("2024-10-27-02:00+0100")
    longest = manifest_key(table_day_key(spec, repeated, "archive"))  # its first generation's manifest
    assert len(longest.encode()) > S3_KEY_LIMIT  # the key the table will write that S3 refuses
    from archive_pipeline.definitions import build_definitions
    with pytest.raises(ConfigError) as refused:
        build_definitions(parse_config({"tables": [_hourly(template)]}, "tables.yaml"), check_source=False)
    assert "public.events" in str(refused.value) and "key_template" in str(refused.value)


# --- a day archived under the table's former format, found by the day and lost in a range -------------------------

def test_list_and_compare_of_a_range_find_days_archived_under_a_former_format_in_another_folder(conn, schema, store,
                                                                                              temp_dir):
    """A user keeps each format in its own folder (``key_template: {prefix}/{format}/{schema}.{table}/{date}.{ext}``),
    archives four days as jsonl, then switches the table to csv. The README: "restore, list, compare and verify
    find the day's archive there when nothing is at the new key". What happens: ``list --day 2024-03-10`` and
    ``compare --day 2024-03-10`` find it (archived, equal), but the same commands over the four days call every
    day ``missing`` / ``not-archived``: for more than three days the plan lists the common folder of the new
    keys once (``archive/csv/...``) and takes a day whose folder shows nothing as having no archive, never
    looking under the former format's keys. What should happen: a range gives each day the answer the day
    alone gets (archived, equal)."""
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, date '2024-03-10' + g % 4 FROM generate_series(1, 20) g").format(table))
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
             "key_template": "{prefix}/{format}/{schema}.{table}/{date}.{ext}"}
    before = parse_config({"tables": [entry | {"format": "jsonl"}]}).tables[0]
    for day in days:
        archive_partition(conn, before, day, store, temp_dir=str(temp_dir))
    now = parse_config({"tables": [entry | {"format": "csv"}]}).tables[0]
    assert [s.state for s in day_statuses(conn, now, store, days[:1])] == ["archived"]  # the day alone: found
    assert [c.result for c in compare_days(conn, now, store, days[:1])] == ["equal"]
    assert [s.state for s in day_statuses(conn, now, store, days)] == ["archived"] * 4
    assert [c.result for c in compare_days(conn, now, store, days)] == ["equal"] * 4


# --- a dropped partition's name taken by another table since ---------------------------------------------------

def test_restore_of_a_dropped_partition_whose_name_another_table_took_does_not_ask_to_attach_or_drop_that_table(
        conn, schema, store, temp_dir):
    """A declarative table's day is archived and removed by retention's ``drop`` (the manifest records
    ``removed.action: drop``). Later someone creates a table of their own under the freed name ``ev_20240310``
    (another table, other columns). The user restores the day with ``into='original'``. What happens: the restore
    takes that table for the day's partition "detached by retention?": "it may still hold the day: attach it again
    (ALTER TABLE ... ATTACH PARTITION ...), or drop it and restore again": the ATTACH cannot work (other
    columns) and the other remedy destroys a table that has nothing to do with the archive. The manifest says the
    partition was dropped, so this table is not it. What should happen: a refusal saying the day's partition was
    dropped and its name is now another table's (rename that table, or restore into a new table), never an
    ATTACH or a DROP of that table."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import RestoreError, restore_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_20240310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10+00') "
                         "TO ('2024-03-11+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 5) g").format(s))
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                     "partitioning": {"mode": "declarative"},
                                     "retention": {"keep_days": 1, "action": "drop"}}]}).tables[0]
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert remove_day(conn, spec, DAY, store).rows == 5
    conn.execute(sql.SQL("CREATE TABLE {}.ev_20240310 (note text)").format(s))  # someone else's table
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=str(temp_dir))
    message = str(refused.value)
    assert "ev_20240310" in message
    assert "ATTACH PARTITION" not in message and "drop it" not in message, message
