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


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_composite_field_added_while_the_day_is_read_is_not_archived_green(fmt, pg, conn, schema, store, s3_client,
                                                                             bucket, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (partitioned by RANGE ((at::date)), a column ``c`` of composite type
    ``comp (a int, b text)``). While the run is between its fingerprint and its COPY, a migration in another
    session commits ``ALTER TYPE comp ADD ATTRIBUTE z int`` (PostgreSQL allows it while the table is read: it
    takes no lock the reading session holds). The composite's output reads the type from the catalog as committed,
    not as the snapshot sees it: the fingerprint hashed ``(1,q)``, the COPY writes ``(1,q,)``, and the manifest
    records the shape ``(a, b)``. The run publishes a green archive whose rows are not the ones its fingerprint and
    shape describe (and a removal's proof then compares against that). As for an enum label renamed during the
    read (same_printed_names), the run should fail the day, retryable, naming the composite type that changed."""
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="none",
                     partitioning={"mode": "declarative"})
    _expression_keyed(conn, schema)
    real = archive_module.refuse_unrestorable

    def migrate_then(table):  # called after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp ADD ATTRIBUTE z int")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", migrate_then)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable and "comp" in str(exc), str(exc)
        return
    body = decompress(download(s3_client, bucket, result.key), "none")
    rows = read_jsonl(body) if fmt == "jsonl" else read_csv(body)
    pytest.fail(f"archived green with values {[r['c'] for r in rows]} under a fingerprint and shape of (a, b)")
