"""Hunt 8 (ne): counts at the edge of a real deployment: many partitions, many keys, many periods."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)


def _children(conn, parent: str, first: dt.date, count: int, plus: str = "", tag: str = "") -> None:
    """``count`` daily children of ``parent`` from ``first`` (100 per transaction: creating them locks them too)."""
    for batch in range(0, count, 100):
        conn.execute(f"DO $$ BEGIN FOR i IN {batch}..{min(batch + 99, count - 1)} LOOP EXECUTE format('CREATE TABLE %I "
                     f"PARTITION OF {parent} FOR VALUES FROM (%L) TO (%L)', '{parent}_{tag}' || i, ('{first}'::date + i)::text "
                     f"|| '{plus}', ('{first}'::date + i + 1)::text || '{plus}'); END LOOP; END $$")


def test_archiving_one_day_of_an_expression_keyed_table_does_not_lock_every_partition(store, temp_dir):
    """A user partitions ev by RANGE ((at::date)), one child a day (the README's own example of an expression
    key), and keeps two years of children. Archiving one day reads it through the parent with
    ``at >= lo AND at < hi`` only: PostgreSQL cannot prune by an expression key from a condition on the bare
    column, so the day's query opens, scans and locks every partition (and its indexes) in its snapshot. On a
    server whose lock table is smaller than that (max_locks_per_transaction x connections, shared by the
    concurrent archive runs of a pool) the archive fails with "the server's lock table is full", and so do the
    sensor's probes (its new days are never found) and compare ("unreadable"). The same table partitioned by
    RANGE (at) archives the day on this server. The day's query should also bound the key expression
    (``(at::date)`` between the day's dates), so that only the day's children are read and locked."""
    from archive_pipeline.local.local_stack import start_postgres

    server = start_postgres({"max_locks_per_transaction": "10", "max_connections": "10", "autovacuum": "off"})
    try:
        with server.connect() as conn:
            first = DAY - dt.timedelta(days=300)
            conn.execute("CREATE TABLE ev (id int, at timestamp, v text) PARTITION BY RANGE ((at::date))")
            _children(conn, "ev", first, 600)
            conn.execute("INSERT INTO ev SELECT g, %s::timestamp + g * interval '1 second', 'x' "
                         "FROM generate_series(1, 100) g", (f"{DAY}",))
            spec = TableSpec(name="public.ev", day_column="at", start_date=first, partitioning={"mode": "declarative"})
            result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
            assert result.rows == 100
    finally:
        server.stop()


def test_dropping_one_day_of_an_expression_keyed_table_does_not_lock_every_partition(store, temp_dir):
    """Retention action 'drop' on a table partitioned by RANGE ((at::date)), one child a day, two years of
    children: the day is archived (while the table had few children) and its own child is to be dropped. The
    removal's proof and re-check read the day through the parent with ``at >= lo AND at < hi`` only, which
    cannot prune by the expression key, so the removing transaction locks every partition and, on a server
    whose lock table is smaller, fails with "the server's lock table is full", though dropping one child needs
    the locks of that child and the parent only (the same table keyed by RANGE (at) drops the day on this
    server). It should read and lock only the day's children (bound the key expression too)."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.local.local_stack import start_postgres

    server = start_postgres({"max_locks_per_transaction": "10", "max_connections": "10", "autovacuum": "off"})
    try:
        with server.connect() as conn:
            first = DAY - dt.timedelta(days=300)
            conn.execute("CREATE TABLE ev (id int, at timestamp, v text) PARTITION BY RANGE ((at::date))")
            conn.execute(f"CREATE TABLE ev_day PARTITION OF ev FOR VALUES FROM ('{DAY}') TO ('{DAY + dt.timedelta(days=1)}')")
            conn.execute("INSERT INTO ev SELECT g, %s::timestamp + g * interval '1 second', 'x' "
                         "FROM generate_series(1, 100) g", (f"{DAY}",))
            spec = TableSpec(name="public.ev", day_column="at", start_date=first, partitioning={"mode": "declarative"},
                             retention={"keep_days": 30, "action": "drop"})
            assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 100
            _children(conn, "ev", first, 300, tag="a")  # the days before DAY
            _children(conn, "ev", DAY + dt.timedelta(days=1), 300, tag="b")  # and after it
            removal = remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
            assert removal.rows == 100 and conn.execute("SELECT to_regclass('ev_day') IS NULL").fetchone()[0]
    finally:
        server.stop()
