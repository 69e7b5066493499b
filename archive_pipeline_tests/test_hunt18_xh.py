"""Hunt 18 (xh): concurrency: two or more archiver runs and sessions on one table-day or on tables that share a
key prefix or a bucket, held at an exact step by the fault proxy's hooks or PostgreSQL locks (never a sleep)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.core.verify import load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_race_hunt import in_thread, proxied, wait_until

DAY = dt.date(2024, 3, 10)


def _entries(schema: str) -> list[dict]:
    """``<schema>.a`` (JSONL) and ``<schema>.b`` (CSV), both zstd, under ``{prefix}/{schema}/{date}.{ext}``: keys
    that differ only by the extension."""
    return [{"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), "format": fmt,
             "compression": "zstd", "key_template": "{prefix}/{schema}/{date}.{ext}"}
            for name, fmt in (("a", "jsonl"), ("b", "csv"))]


def _two_tables(conn, schema: str) -> tuple:
    """The two tables of :func:`_entries`, each from its own configuration (two code locations archiving into one
    bucket and prefix): one configuration holding both is refused at load (see the test below), two are not, and
    there a run's tidying must tell the other table's keys from its own day's under another format."""
    for name in ("a", "b"):
        table = sql.Identifier(schema, name)
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 01:00+00'::timestamptz + g * interval '1 second', "
                             "'row ' || g FROM generate_series(1, 50) g").format(table))
    return tuple(parse_config({"tables": [entry]}).tables[0] for entry in _entries(schema))


def test_one_configuration_whose_tables_keys_differ_only_by_the_extension_is_refused():
    """The load refuses ``s.a`` (JSONL) and ``s.b`` (CSV) under ``{prefix}/{schema}/{date}.{ext}`` (so does a codec
    that differs alone): a change of format of one lands on the other's key, and each one's runs take the other's
    key for their own day's under a former format. The message names both tables and the remedy."""
    with pytest.raises(ConfigError, match=r"tables 's\.a' .* and 's\.b' .* differ only by their format's or codec's "
                                          r"extension.*put \{table\} or \{schema\}\.\{table\} in key_template"):
        parse_config({"tables": _entries("s")})
    codecs = [{**entry, "format": "jsonl", "compression": codec} for entry, codec in zip(_entries("s"), ("zstd", "none"))]
    with pytest.raises(ConfigError, match="differ only by their format's or codec's extension"):
        parse_config({"tables": codecs})
    parse_config({"tables": [{**entry, "key_template": "{prefix}/{schema}.{table}/{date}.{ext}"}
                             for entry in _entries("s")]})


def test_a_sibling_tables_rerun_does_not_delete_the_generation_another_table_just_committed(
        conn, schema, store, s3, bucket):
    """Scenario: ``s.a`` is archived as JSONL and ``s.b`` as CSV under ``{prefix}/{schema}/{date}.{ext}`` (the keys
    differ by their extension, so they share the day's prefix ``archive/s/2024-03-10``; since the fix one
    configuration holding both is refused at load, so here each comes from its own, sharing the bucket). Both days are archived. A late row lands in ``s.b`` and an overwrite
    run of ``s.b`` uploads generation 2; its manifest PUT is held by the proxy. Meanwhile the schedule re-runs
    ``s.a``'s day (a plain re-run that skips). ``s.a``'s run is held at the DELETE it sends; ``s.b``'s commit is
    let go and returns green; then ``s.a``'s DELETE is let go.

    Now: ``s.a``'s run tidies ``s.b``'s key as if it were its own "former format" (``_Archiving._tidy_former``:
    ``keys.other_extension_keys`` renders ``s.a``'s day as CSV, which is ``s.b``'s key, and
    ``leftovers.tidy_day`` checks only that the manifest there is of the same *database*, not of this table).
    Under ``s.a``'s table-day lock, which does not exclude ``s.b``'s runs, it reads ``s.b``'s manifest
    (generation 1) and deletes generation 2 as "a generation no manifest names" after ``s.b`` committed it:
    ``s.b``'s run reported green (and retired generation 1), and its manifest now names a deleted object: the
    day's archive is gone.

    Should: a run never tidies keys whose manifest belongs to another table (``foreign_manifest``), nor another
    table's generations: tidy only keys whose manifest names this table, or refuse such a configuration at load
    (two tables whose day keys differ only by ``{ext}``/``{format}`` share each other's "former format" keys).
    """
    spec_a, spec_b = _two_tables(conn, schema)
    archive_partition(conn, spec_a, DAY, store)
    archive_partition(conn, spec_b, DAY, store)
    b_key = f"archive/{schema}/2024-03-10.csv.zst"
    b_gen2 = f"archive/{schema}/2024-03-10.g2.csv.zst"
    conn.execute(sql.SQL("INSERT INTO {} VALUES (999, '2024-03-10 12:00+00', 'late')").format(
        sql.Identifier(schema, "b")))
    with FaultProxy(s3.endpoint_url) as proxy:
        commit_b = proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv\.zst\.manifest\.json$", action="hold",
                                   times=1))
        tidy_a = proxy.add(Fault(method="DELETE", path=r"2024-03-10\.g2\.csv\.zst$", action="hold", times=1))
        with psycopg.connect(conn.info.dsn, autocommit=True) as conn_b, \
                psycopg.connect(conn.info.dsn, autocommit=True) as conn_a:
            run_b, out_b = in_thread(lambda: archive_partition(conn_b, spec_b, DAY, proxied(proxy, bucket),
                                                               overwrite=True))
            assert wait_until(lambda: proxy.held() == 1 or not run_b.is_alive()), "s.b never reached its commit"
            assert "error" not in out_b, out_b
            run_a, out_a = in_thread(lambda: archive_partition(conn_a, spec_a, DAY, proxied(proxy, bucket)))
            reached = wait_until(lambda: proxy.held() == 2 or not run_a.is_alive(), timeout=20)
            commit_b.gate.set()
            run_b.join(30)
            tidy_a.gate.set()
            run_a.join(30)
    assert "error" not in out_b, out_b
    assert out_b["result"].key == b_gen2
    assert reached, f"s.a's run sent no DELETE of s.b's generation 2 ({out_a})"
    manifest = load_manifest(store, b_key)
    assert manifest["object"]["key"] == b_gen2
    assert store.head(b_gen2) is not None, (
        "s.b's run committed generation 2 and reported green, and s.a's re-run then deleted it: s.b's manifest "
        "names a missing object")


def test_a_sibling_tables_run_does_not_abort_another_tables_upload_in_flight(conn, schema, store, s3, bucket):
    """Scenario: the same two configurations as above, with ``s.b`` as uncompressed CSV
    (``archive/s/2024-03-10.csv``) and ``s.a`` as JSONL/zstd (``archive/s/2024-03-10.jsonl.zst``). ``s.b``'s
    first archive of the day is a multipart upload (more than one 5 MiB part); the proxy holds its first part.
    Meanwhile ``s.a``'s day is archived (its own table-day lock, which does not exclude ``s.b``'s run).

    Now: ``s.a``'s run, in ``_Archiving._tidy``, hands ``keys.other_extension_keys`` (``s.a``'s day rendered in
    every other format and codec, among them ``s.b``'s very key) to ``leftovers.tidy_day``, which finds ``s.b``'s
    upload marker beside its key and aborts "stale" uploads under the day's prefix: ``s.b``'s live upload,
    which "are never anyone's data" only under the day's own lock. ``s.b``'s run then fails with S3's
    ``NoSuchUpload`` (nothing naming the other table's run as the cause), and the same happens on every run of
    ``s.a`` that overlaps it.

    Should: a run aborts only uploads its own table-day lock covers (keys whose marker names this table, or only
    this key's generations), never a live upload of another table that shares the prefix; or such a
    configuration is refused at load.
    """
    spec_a, spec_b = _two_tables(conn, schema)
    spec_b = spec_b.model_copy(update={"compression": "none"})
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 02:00+00'::timestamptz + g * interval '1 ms', "
                         "md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) FROM generate_series(1, 80000) g"
                         ).format(sql.Identifier(schema, "b")))
    archive_partition(conn, spec_a, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        part = proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", query="partNumber=", action="hold", times=1))
        with psycopg.connect(conn.info.dsn, autocommit=True) as conn_b:
            run_b, out_b = in_thread(lambda: archive_partition(conn_b, spec_b, DAY, proxied(proxy, bucket)))
            assert wait_until(lambda: proxy.held() == 1 or not run_b.is_alive()), "s.b's upload never started"
            assert "error" not in out_b, out_b
            result_a = archive_partition(conn, spec_a, DAY, store)  # a re-run of s.a's day (it skips)
            part.gate.set()
            run_b.join(60)
    assert result_a.skipped
    assert "error" not in out_b, f"s.a's run aborted s.b's upload in flight: {out_b.get('error')!r}"
    assert load_manifest(store, f"archive/{schema}/2024-03-10.csv")["rows"] == 80050
