"""Hunt 4 (self): what the eighteenth session found and left, fixed in the nineteenth. Real PostgreSQL and
S3 (moto over HTTP)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key, table_day_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.verify import load_manifest

DAY = dt.date(2024, 3, 10)


from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: E402,F401 - the same fixture: 20 rows on DAY, column mode


@pytest.mark.parametrize("changed", [{"format": "csv"}, {"compression": "gzip"}, {"format": "parquet"}])
def test_a_removed_day_is_not_archived_as_empty_after_the_format_or_codec_changed(conn, schema, ev, store, changed):
    """Archive a day as JSONL/zstd, let retention remove it, then change the table's format or codec (the
    default key_template has ``{ext}``, so the day's key changes). Was: the next run found nothing at the new
    key and archived the emptied source as an empty day, green, while the removed rows' archive sat unnoticed
    at the old key. Should: refused as a removed day, naming the old archive; nothing is written at the new
    key; the old archive stays; late rows are archived only with overwrite."""
    archive_partition(conn, ev, DAY, store)
    old = table_day_key(ev, DAY, store.prefix)
    assert remove_day(conn, ev, DAY, store).rows == 20
    now = ev.model_copy(update=changed)
    new = table_day_key(now, DAY, store.prefix)
    assert new != old
    with pytest.raises(ArchiveError, match=r"removed from the source.*only copy") as caught:
        archive_partition(conn, now, DAY, store)
    assert old in str(caught.value) and not caught.value.retryable
    assert load_manifest(store, new) is None and store.head(manifest_key(new)) is None
    assert load_manifest(store, old)["removed"]["state"] == "done"
    conn.execute(sql.SQL("INSERT INTO {} VALUES (100, %s, 'late')").format(sql.Identifier(schema, "ev")),
                 (f"{DAY} 05:00+00",))
    with pytest.raises(ArchiveError, match="other rows"):
        archive_partition(conn, now, DAY, store)
    assert archive_partition(conn, now, DAY, store, overwrite=True).rows == 1
    assert load_manifest(store, old)["rows"] == 20  # the removed rows' archive is untouched


def test_a_wall_clock_hour_before_a_fall_back_nights_repeated_hour_can_be_dropped(conn, schema, store):
    """An hourly table partitioned by a ``timestamp`` (wall-clock) column in Europe/Berlin, one child per
    wall-clock hour (as pg_partman makes them). The child of 2024-10-27 01:00, ``FROM ('01:00') TO ('02:00')``,
    holds exactly the rows the hour reads, but the server reads its upper bound 02:00 as the second 02:00, so as
    instants it spans two hours. Was: retention ``drop`` refused it ("not one partition of its own") every year.
    Should: dropped like any other hour, after its archive is proven; its neighbours stay."""
    from archive_pipeline_tests.test_hunt3_z4 import BERLIN, wall_clock_hours

    wall_clock_hours(conn, schema, "2024-10-26 23:00", 5)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", granularity="hourly", timezone=BERLIN,
                     start_date="2024-10-26", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": "drop"})
    hour = "2024-10-27-01:00"
    held = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-10-27 01:00' AND at < '2024-10-27 02:00'")
                        .format(sql.Identifier(schema, "ev"))).fetchone()[0]
    assert archive_partition(conn, spec, hour, store).rows == held > 0
    assert remove_day(conn, spec, hour, store).rows == held
    left = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (f'"{schema}".ev',))}
    assert left == {"ev_2623", "ev_2700", "ev_2702", "ev_2703"}, left


@pytest.mark.parametrize("width", [40, 60])
def test_a_narrow_terminal_shows_every_column_of_a_listing(width):
    """``archive-pipeline list`` on a 40-column terminal (a phone's SSH client, a split pane). Was: rich shrank
    the table's name column to nothing, so no row said which table it was. Should: where the columns do not
    fit, each row prints as ``header: value`` lines, every value whole; where they fit, the table as before."""
    from rich.text import Text

    from archive_pipeline.cli import _CliConsole, _table

    def listing(columns: int) -> str:
        console = _CliConsole(width=columns, markup=False, emoji=False, record=True, file=open("/dev/null", "w"))
        table = _table("table", "day", "state", "rows", "bytes", "archived at", "key", "note")
        table.add_row("public.événements_2024", "2024-03-10", Text("archived", style="green"), "20", "1.2 kB",
                      "2024-03-11 00:00", "archive/public.events/2024/03/2024-03-10.jsonl.zst", "")
        console.print(table)
        return console.export_text()

    narrow = listing(width)
    assert "table: public.événements_2024" in narrow and "state: archived" in narrow, narrow
    assert all(len(line) <= width for line in narrow.splitlines())
    wide = listing(200)
    assert wide.splitlines()[0].split() == ["table", "day", "state", "rows", "bytes", "archived", "at", "key", "note"]


def test_a_store_without_conditional_writes_is_written_to_without_them(conn, schema, ev, s3, bucket, store, temp_dir):
    """A store that answers 501 NotImplemented to If-None-Match (an older MinIO, a gateway): the first write that
    carries the condition is sent again without it, conditions stay off for the store, and the day is archived
    whole (its manifest names an object holding exactly the recorded bytes)."""
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.core.verify import verify_archive
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    with FaultProxy(s3.endpoint_url) as proxy:
        faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        refused = proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="error", status=501,
                                  code="NotImplemented", times=1))
        result = archive_partition(conn, ev, DAY, faulty, temp_dir=temp_dir)
        assert refused.hits == 1 and not faulty.conditional_writes
    assert result.rows == 20
    assert verify_archive(store, table_day_key(ev, DAY, store.prefix), {}, deep=True) == []


def test_a_recursion_past_the_stack_depth_limit_is_not_called_a_value_too_big(conn, schema):
    """A user's function that calls itself (or a trigger that fires itself, reached from any of our statements):
    PostgreSQL stops it with "stack depth limit exceeded" (SQLSTATE 54001). Was: classified as "a value, row or
    query exceeds a PostgreSQL limit", with the remedy to archive as parquet or split the values. Should: the
    recursion named as the cause, no value blamed, no format change advised."""
    import psycopg

    from archive_pipeline.core.errors import wrap

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE FUNCTION {}.deeper(n int) RETURNS int LANGUAGE plpgsql AS "
                         "$$BEGIN RETURN {}.deeper(n + 1); END$$").format(s, s))
    with pytest.raises(psycopg.errors.StatementTooComplex) as raised:
        conn.execute(sql.SQL("SELECT {}.deeper(1)").format(s))
    error = wrap(raised.value, f"{schema}.ev", "2024-03-10")
    said = f"{error} {error.remedy}"
    assert "recursed" in said and "parquet" not in said and not error.retryable, said
