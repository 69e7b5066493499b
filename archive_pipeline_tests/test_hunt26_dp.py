"""Hunt 26 (dp): time at the edges: periods that have not ended, by the database's own clock.

Each test is a bug found: it fails now and passes once the product is fixed."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key

ZONE = "America/Los_Angeles"


def test_the_core_archiver_does_not_publish_a_day_the_database_is_still_writing(conn, schema, store, temp_dir):
    """Scenario: a table configured ``timezone: America/Los_Angeles`` whose rows are stamped by the database
    (``at timestamptz DEFAULT now()``). A nightly script uses the Core API the README documents
    (``archive.archive_partition(conn, spec, day, store)``) and passes "yesterday" as a date computed in UTC (or
    the command line / a Dagster run on a host whose clock runs ahead of the database server's, which decide "over"
    by their own clock): at 02:00 UTC that names a Los Angeles day that still has 6 hours to go. Here: the Los
    Angeles day the database's ``now()`` is in, holding the two rows written so far.

    Now: archive_partition (archive.py, _Archiver.run: nothing between read_snapshot and publishing compares the
    period with the snapshot's own time, ``Snapshot.taken_at`` = the server's now()) reads the rows written so far
    and publishes them as the whole day, green: ``rows=2``, a manifest, an object. The day shows archived with a
    part of its rows until its next run (the schedule's, once the day is over) finds it "changed since archived"
    and fails, needing an overwrite. Only the callers guard against this (defs/assets.run_periods, cli._not_over,
    plan.select_days), by the code server's or shell's clock, not by the database's, which stamps the rows.

    Should: a period whose end is after the snapshot's time (the database's now()) is refused before anything is
    written, naming table, day and when it ends (retryable: it is archived once over); nothing is left in the
    store. Fix idea: in the archiver, right after read_snapshot, refuse when ``snapshot.taken_at < day.utc_end``
    (a SourceError, retryable, "not over yet: it ends at ... by the database's clock")."""
    table = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL DEFAULT now())").format(table))
    conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1), (2)").format(table))
    # (the Los Angeles day of two minutes from now: still not over when the archive runs, even at its last minute)
    today = conn.execute("SELECT ((now() + interval '2 minutes') AT TIME ZONE %s)::date", (ZONE,)).fetchone()[0]
    spec = TableSpec(name=f"{schema}.t", day_column="at", timezone=ZONE, start_date=today.replace(day=1))
    period = spec.period(today)
    assert conn.execute("SELECT now() < %s", (period.utc_end,)).fetchone()[0]  # the day is still being written

    published = None
    try:
        published = archive_partition(conn, spec, today, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        said = str(exc)
        assert spec.name in said and period.key in said, said
    key = render_key(spec, period, store.prefix)
    assert published is None, f"a day not over was published as archived: {published.rows} rows at {published.key}"
    assert store.head(key) is None and store.head(manifest_key(key)) is None
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
