"""Hunt 8 (no): the source changes meanwhile, with real concurrency on real PostgreSQL, for tables partitioned by
RANGE of an expression of the day column: another session commits between two steps of a run."""

from __future__ import annotations

import datetime as dt
import psycopg
import pytest

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import decompress, download, read_csv, read_jsonl

DAY = dt.date(2024, 3, 10)


def _expression_keyed(conn, schema: str) -> None:
    """ev(id, at timestamp, c comp) partitioned by RANGE ((at::date)), a child per day, three rows on DAY."""
    conn.execute(f"CREATE TYPE {schema}.comp AS (a int, b text)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamp, c {schema}.comp) PARTITION BY RANGE ((at::date))")
    for offset in (-1, 0, 1):
        first = DAY + dt.timedelta(days=offset)
        conn.execute(f"CREATE TABLE {schema}.ev_{first:%m%d} PARTITION OF {schema}.ev "
                     f"FOR VALUES FROM ('{first}') TO ('{first + dt.timedelta(days=1)}')")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s::timestamp + g * interval '1 hour', ROW(g, 'q')::{schema}.comp "
                 "FROM generate_series(1, 3) g", (f"{DAY}",))


@pytest.mark.parametrize("fmt,change", [("jsonl", "ADD ATTRIBUTE z int"), ("csv", "ADD ATTRIBUTE z int"),
                                        ("csv", "DROP ATTRIBUTE b")])
def test_a_composite_field_added_while_the_day_is_read_is_not_archived_green(fmt, change, pg, conn, schema, store, s3_client,
                                                                             bucket, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (partitioned by RANGE ((at::date)), a column ``c`` of composite type
    ``comp (a int, b text)``). While the run is between its fingerprint and its COPY, a migration in another
    session commits ``ALTER TYPE comp ADD ATTRIBUTE z int`` (PostgreSQL allows it while the table is read: it
    takes no lock the reading session holds). The composite's output reads the type from the catalog as committed,
    not as the snapshot sees it: the fingerprint hashed ``(1,q)``, the COPY writes ``(1,q,)``, and the manifest
    records the shape ``(a, b)``. The run publishes a green archive whose rows are not the ones its fingerprint and
    shape describe (and a removal's proof then compares against that). As for an enum label renamed during the
    read (same_printed_names), the run should fail the day, retryable, naming the composite type that changed.
    (``DROP ATTRIBUTE b`` meanwhile is worse: the object holds ``(1)``, the fingerprint and shape the values of b.)"""
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="none",
                     partitioning={"mode": "declarative"})
    _expression_keyed(conn, schema)
    real = archive_module.refuse_unrestorable

    def migrate_then(table):  # called after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp {change}")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", migrate_then)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable and "comp" in str(exc), str(exc)
        return
    body = decompress(download(s3_client, bucket, result.key), "none")
    rows = read_jsonl(body) if fmt == "jsonl" else read_csv(body)
    pytest.fail(f"archived green with values {[r['c'] for r in rows]} under a fingerprint and shape of (a, b) "
                f"and values (1,q), (2,q), (3,q)")


def test_a_composite_field_added_between_the_removals_proof_and_its_lock_is_named_not_called_changed_rows(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """Retention action 'drop' on ``ev`` (RANGE ((at::date)), composite column ``c``): the day is archived and its
    removal proves the archive. Between that proof and the removal's lock (while the pending mark is written), a
    migration commits ``ALTER TYPE comp ADD ATTRIBUTE z int``; no row is touched. The re-check under the lock
    then refuses with "its rows changed since they were archived and proven (3 rows now, 3 archived); archive the
    day again (overwrite)": the user is told the day's rows were updated, which they were not. The proof itself,
    deep verification, compare and a re-run all name the cause ("a type inside the source's columns changed ...
    the composite comp has the fields (a, b, z) now, (a, b) when archived") and its remedy (put the type back, or
    archive again). The refusal should name the composite type that changed, as they do."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    _expression_keyed(conn, schema)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    real = lifecycle._require_proven_object

    def migrate_then(*args):  # after the proof and the pending mark, before the removal's locks
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp ADD ATTRIBUTE z int")
        return real(*args)

    monkeypatch.setattr(lifecycle, "_require_proven_object", migrate_then)
    with pytest.raises(RemovalRefused) as refused:
        remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    message = str(refused.value)
    assert "rows changed" not in message and "comp" in message, message
    assert conn.execute(f"SELECT count(*) FROM {schema}.ev").fetchone()[0] == 3


def test_a_partition_attached_between_the_fingerprint_and_the_read_is_named_as_the_cause(pg, conn, schema, store,
                                                                                         temp_dir, monkeypatch):
    """``ev`` is partitioned by RANGE (date_trunc('hour', at)); the day's morning is in ``ev_a``, and a loader fills
    a plain table ``ev_b`` with the afternoon's rows to attach it (the README's own way of adding a partition). A
    small day is fingerprinted first in the run's snapshot, then read. The ATTACH PARTITION commits in between (it
    takes no lock the run holds): the COPY, planned after it, reads ``ev_b`` too, whose rows the snapshot sees. The
    run fails, safely, but says "read 3 rows but the snapshot's fingerprint counts 2 ... TRUNCATE, ALTER TABLE that
    rewrites it, or dropping or detaching the day's partition during a run causes this ... (if none ran, please
    report this)": none of those ran, and the user is sent to report a bug. The README says a partition that joined
    after the snapshot is detected and named ("ev_b joined it (ATTACH PARTITION or INHERIT) after the snapshot"), as
    the fingerprint taken alongside the read does; the failure should say so here too."""
    s = schema
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamp) PARTITION BY RANGE (date_trunc('hour', at))")
    conn.execute(f"CREATE TABLE {s}.ev_a PARTITION OF {s}.ev FOR VALUES FROM ('{DAY} 00:00') TO ('{DAY} 12:00')")
    conn.execute(f"CREATE TABLE {s}.ev_b (id int, at timestamp)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY} 01:00'), (2, '{DAY} 02:00')")
    conn.execute(f"INSERT INTO {s}.ev_b VALUES (3, '{DAY} 13:00')")
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none",
                     partitioning={"mode": "declarative"})
    real = archive_module.refuse_unrestorable

    def attach_then(table):  # called after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TABLE {s}.ev ATTACH PARTITION {s}.ev_b FOR VALUES FROM ('{DAY} 12:00') "
                          f"TO ('{DAY + dt.timedelta(days=1)} 00:00')")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", attach_then)
    with pytest.raises(ArchiveError) as failed:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failed.value)
    assert failed.value.retryable and "ev_b" in message and "ATTACH" in message, message
