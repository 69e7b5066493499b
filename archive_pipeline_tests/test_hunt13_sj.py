"""Hunt 13 (sj): scale and resource limits: many tables, long ranges (years of days), temp space and memory
at their edges, where correctness or the promise of flat memory / bounded time breaks."""

from __future__ import annotations

import datetime as dt

import psycopg
from dagster import build_sensor_context, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource


def test_a_locked_table_fails_the_sensor_tick_naming_its_days_briefly_not_each_of_a_years_backlog(
        pg, conn, schema, archive_env):
    """A declarative table with a year of history not yet archived (one child for 2023, the sensor reads its
    days from the catalog: 365 candidates) is held ACCESS EXCLUSIVE by a migration while the sensor ticks
    (``source: {lock_timeout_ms: 200}``). The tick finds the parent locked after one probe and fails the rest
    unprobed (good: one lock_timeout, not 365). But its message, logged as a warning and raised as the tick's
    error, lists every one of the 365 days: "365 day(s) not inspected (2023-01-01, 2023-01-02, ... 2023-12-31):
    looking for days to archive failed: ..." (~5,100 characters on one line, and 3 years of backlog make it
    13,000), where the cause and remedy drown at the end of the wall of dates. Every other message of the
    sensor bounds such lists (``_listed``: the first 5 and "and N more", or a range ``first..last``).
    Expected: the days are named briefly (a range, or the first few and a count), the whole tick error stays
    short (< 1,000 characters) and still names the table, the count and the cause.
    Fix idea: in sensors.py use ``_listed([d.isoformat() for d in unprobed])`` (or ``_span``) instead of joining
    every day."""
    parent = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2023-01-01 00:00+00') "
                         "TO ('2024-01-01 00:00+00')").format(sql.Identifier(schema, "ev_2023"), parent))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2023-01-01 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(0, 364) g").format(parent))
    config = parse_config({"source": {"lock_timeout_ms": 200},
                           "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2023-01-01",
                                       "partitioning": {"mode": "declarative"}}]})
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with psycopg.connect(pg.dsn, autocommit=True) as migration, instance_for_test() as instance:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent))
        try:
            sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn, lock_timeout_ms=200)},
                repository_def=repo))
            raise AssertionError("the tick inspected a locked table")
        except Exception as exc:  # noqa: BLE001 - the tick's error, as the daemon shows it
            told = str(exc)
        finally:
            migration.execute("ROLLBACK")
    assert f"{schema}.ev" in told and "365 day(s) not inspected" in told, told[:2000]
    assert "2023-07-01" not in told, f"every day of the backlog is named ({len(told):,} characters): {told[:600]}"
    assert len(told) < 1000, f"{len(told):,} characters: {told[:600]} ..."


def _cli_env(pg, s3, bucket, config, endpoint: str | None = None) -> dict[str, str]:
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": endpoint or s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive",
            "COLUMNS": "250"}


def _daily_rows(conn, schema: str, first: dt.date, days: int) -> dict:
    """ev(id, at date): one row on each of ``days`` days from ``first``; its configuration entry."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::date + g FROM generate_series(0, %s) g").format(table),
                 (first, days - 1))
    return {"name": f"{schema}.ev", "day_column": "at", "start_date": first.isoformat()}


def test_archive_of_a_range_whose_days_all_changed_suggests_one_command_not_one_per_day(
        pg, s3, bucket, conn, schema, store, temp_dir, tmp_path):
    """A table's 60 archived days (two months) all change in the source at once (a column added by a migration,
    or a backfilled correction): ``archive --from 2024-01-01 --to 2024-02-29`` fails each day as "changed since
    archived" (right: not without overwrite). The command's closing message then spells one complete command
    per day, ``archive-pipeline archive --table s.ev --day 2024-01-01 --overwrite; archive-pipeline archive
    --table s.ev --day 2024-01-02 --overwrite; ...``: 60 commands, ~4,600 characters on one line (a year: 365,
    ~29,000), for what one ``archive --table s.ev --from 2024-01-01 --to 2024-02-29 --overwrite`` does (the
    range the user just gave). Expected: the remedy stays readable at any range: a range command (the
    user's --from/--to with --overwrite, or the first..last changed day), or the first few days and a count,
    under ~1,000 characters. Fix idea: in cli.archive, when more than a few days need overwrite, suggest
    ``run.command('archive') + --table/--from/--to/--overwrite`` per table instead of one command per day
    (the same for the ``--overwrite`` run's own failures)."""
    import yaml
    from click.testing import CliRunner

    from archive_pipeline.cli import main
    from archive_pipeline.core.archive import archive_partition

    first, days = dt.date(2024, 1, 1), 60
    entry = _daily_rows(conn, schema, first, days)
    spec = parse_config({"tables": [entry]}).tables[0]
    for i in range(days):
        archive_partition(conn, spec, first + dt.timedelta(days=i), store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN note text DEFAULT 'migrated'").format(
        sql.Identifier(schema, "ev")))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [entry]}))
    last = first + dt.timedelta(days=days - 1)
    done = CliRunner(env=_cli_env(pg, s3, bucket, config)).invoke(
        main, ["archive", "--from", first.isoformat(), "--to", last.isoformat()])
    assert done.exit_code == 1, done.output[-3000:]
    closing = [line for line in done.output.splitlines() if "day(s) failed" in line]
    assert closing, done.output[-3000:]
    told = closing[-1]
    assert "--overwrite" in told, told[:1000]
    assert told.count("--overwrite") <= 3 and len(told) < 1000, \
        f"{told.count('--overwrite')} commands, {len(told):,} characters: {told[:700]} ..."


def test_a_sensor_tick_over_declarative_tables_with_a_backlog_probes_what_it_requests_not_every_day(
        pg, conn, schema, archive_env, monkeypatch):
    """Twelve declarative tables, each with a year of history in the source (a child for 2023, a row every
    day) and nothing archived yet: the first deployment of the location over existing tables, or a table
    added with its history. The sensor requests ``max_runs_per_tick`` (50) runs per tick. Now: before
    choosing those 50, the tick probes every missing day of every table with its own ``SELECT EXISTS``
    round trip: 12 x 365 = 4,380 queries for 50 requests; measured at 160 such tables, 58,400 queries and a
    43 s tick (the README's scale section, "the first tick after the load 3.2 s ... every goal met at 99
    declarative tables" with a 5 s goal, was measured on 2026-12-03, before discovery probed each catalog day
    for rows on 2026-12-04: 99 tables x 3 years is ~108,000 probes, past Dagster's 60 s sensor timeout, so such
    a location would request nothing at all). Expected: the tick's work is bounded by what it requests and by
    the tables, not by the backlog's days: probe lazily as ``untried`` takes the days (or all of a table's
    candidate days in one query), here well under 1,000 statements for 12 tables and 50 requests.
    Fix idea: make ``existing_days`` in the sensor a generator consumed by ``wanted_runs`` (probing a batch of a
    table's days at a time), or probe a table's candidate days in one statement (``unnest`` of the bounds with
    ``EXISTS`` per bound, pruned per partition)."""
    first = dt.date(2023, 1, 1)
    tables = 12
    for i in range(tables):
        parent = sql.Identifier(schema, f"ev{i}")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(parent))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2023-01-01 00:00+00') "
                             "TO ('2024-01-01 00:00+00')").format(sql.Identifier(schema, f"ev{i}_2023"), parent))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2023-01-01 12:00+00'::timestamptz + g * interval '1 day' "
                             "FROM generate_series(0, 364) g").format(parent))
    config = parse_config({"sensor": {"max_runs_per_tick": 50},
                           "tables": [{"name": f"{schema}.ev{i}", "day_column": "at", "start_date": first.isoformat(),
                                       "partitioning": {"mode": "declarative"}} for i in range(tables)]})
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    statements: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(self, query, *args, **kwargs):
        statements.append(query.as_string(self.connection) if hasattr(query, "as_string") else str(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    with instance_for_test() as instance:
        result = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    assert len(result.run_requests) == 50
    probes = [s for s in statements if s.lstrip().startswith("SELECT EXISTS")]
    assert len(statements) < 1000, (f"{len(statements):,} statements ({len(probes):,} EXISTS probes, one per day of "
                                    f"each table's backlog) for a tick that requests 50 runs")


def _archived_days(conn, schema, store, temp_dir, tmp_path, first: dt.date, days: int, every: int = 1):
    """ev with a row on each of ``days`` days, every ``every``-th of them archived; the config file."""
    import yaml

    from archive_pipeline.core.archive import archive_partition

    entry = _daily_rows(conn, schema, first, days)
    spec = parse_config({"tables": [entry]}).tables[0]
    for i in range(0, days, every):
        archive_partition(conn, spec, first + dt.timedelta(days=i), store, temp_dir=str(temp_dir))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [entry]}))
    return config


def test_verify_of_a_range_reads_each_days_manifest_once(pg, s3, bucket, conn, schema, store, temp_dir, tmp_path):
    """``verify --from --to`` over 40 archived days, through a proxy that logs the store's requests. The command
    lists the days' prefix once (good: no GET for a day without an archive), then reads each day's manifest
    (plan.lookup_manifests), and then verify_archive reads the same manifest again (_manifest_or_problem) and
    compares the second copy with the first one's fields: 80 manifest GETs for 40 days (a year: 730, each a
    round trip to the store, and on S3 a billed request), where the listing-first design promises one GET
    per archived day (as prune's "one listing and a GET per archived day"). Expected: each day's manifest is
    read once (the object HEAD aside): at most 40 manifest GETs here.
    Fix idea: hand the manifest lookup_manifests read (``found.archived.manifest``) to verify_archive instead of
    reading it again; re-read only when the object's check finds a problem (as the CLI already does to see a
    new generation)."""
    from click.testing import CliRunner

    from archive_pipeline.cli import main
    from archive_pipeline_tests.fault_proxy import FaultProxy

    first, days = dt.date(2024, 1, 1), 40
    config = _archived_days(conn, schema, store, temp_dir, tmp_path, first, days)
    with FaultProxy(s3.endpoint_url) as proxy:
        done = CliRunner(env=_cli_env(pg, s3, bucket, config, proxy.url)).invoke(
            main, ["verify", "--from", first.isoformat(), "--to", (first + dt.timedelta(days=days - 1)).isoformat(),
                   "--json"])
        assert done.exit_code == 0, done.output[-3000:]
        gets = [r.path for r in proxy.requests(method="GET", path=r"\.manifest\.json$")]
    assert '"ok": true' in done.output
    assert len(gets) <= days, f"{len(gets)} manifest GETs for {days} archived days ({len(set(gets))} manifests)"


def test_archive_dry_run_of_a_range_lists_the_bucket_once_not_once_per_day(pg, s3, bucket, conn, schema, store,
                                                                            temp_dir, tmp_path):
    """``archive --dry-run --from --to`` over 40 days with rows, every other one archived already (a backfill
    planned before it is launched: the README's way to see "which days would be skipped or refused").
    Now: the plan asks the store about each day on its own (plan_day -> read_existing -> a LIST of the day's
    prefix), so 40 days cost 40 listings plus a GET per archived day (3 years of history: 1,095 listings, one
    round trip each, ~0.1 s apiece on S3, before the first line is printed), where ``list``, ``compare``,
    ``verify`` and restore's ranges ask one listing of the days' common prefix (plan.lookup_manifests /
    listing.listed_absent: "one LIST of the days' common prefix instead of a GET, a HEAD and a LIST per day").
    Expected: the plan's store reads are one listing for the range (a day the listing shows nothing of needs
    no request of its own), plus a manifest GET per archived day: at most a few LISTs here.
    Fix idea: in plan.plan_archive, list the range once (listing.existing_keys over the days' keys) and hand
    each day its part of that listing (read_existing accepts the listing it would make)."""
    from click.testing import CliRunner

    from archive_pipeline.cli import main
    from archive_pipeline_tests.fault_proxy import FaultProxy

    first, days = dt.date(2024, 1, 1), 40
    config = _archived_days(conn, schema, store, temp_dir, tmp_path, first, days, every=2)
    with FaultProxy(s3.endpoint_url) as proxy:
        done = CliRunner(env=_cli_env(pg, s3, bucket, config, proxy.url)).invoke(
            main, ["archive", "--dry-run", "--from", first.isoformat(),
                   "--to", (first + dt.timedelta(days=days - 1)).isoformat(), "--json"])
        assert done.exit_code == 0, done.output[-3000:]
        lists = [r for r in proxy.records if "list-type" in r.query]
    assert '"archive": 20' in done.output and '"skip": 20' in done.output, done.output[-1500:]
    assert len(lists) <= 3, f"{len(lists)} bucket listings for a dry run of {days} days"


def test_verify_download_counts_a_forged_parquet_objects_rows_within_bounded_memory(
        pg, s3, bucket, conn, schema, store, s3_client, temp_dir, tmp_path):
    """Someone who may write to the bucket replaces a one-row Parquet day's object by a 640-byte Parquet file of
    the same columns whose first column (``id``, the one ``verify --download`` decodes to count rows) is
    dictionary-encoded: one 64 KiB value over 4,000 rows in one row group, and reseals the manifest's digests
    (forge_object). The archiver never writes such a row group (its row groups gather at most ~32 MiB of Arrow
    data). ``verify --download`` counts rows with ``ParquetFile.read_row_group(g, columns=[first])``
    (verify.count_rows), which decodes the dictionary into 4,000 dense copies of the value before it finds
    "rows: recorded 1, object holds 4,000": measured +533 MB peak RSS for a 640-byte object (a few KB decode
    to gigabytes as easily), where CSV and JSONL objects are counted no further than their manifest's
    ``uncompressed_bytes``, and the README promises that whoever may write to the bucket cannot make a reader
    "take its memory". (restore's own Parquet bomb is a known, marked case in test_hunt11_qs; this is the
    verify / download-check path, which only counts.) Expected: the same verdict within bounded memory (well
    under 100 MB above imports here): compare the footer's row counts (``metadata.row_group(g).num_rows``)
    with the manifest's rows before decoding anything, and count by reading the column as a dictionary
    (``read_dictionary``) or in small batches. Measured in a subprocess by its peak RSS (VmHWM) above imports."""
    import json
    import os
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from archive_pipeline.core import keys
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline_tests.helpers import forge_object
    from archive_pipeline_tests.test_hunt11_qs import _cli_peak

    day = dt.date(2024, 3, 10)
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id text, at date, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('1', %s, 'one')").format(table), (day,))
    entry = {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01", "format": "parquet",
             "compression": "zstd"}
    spec = parse_config({"tables": [entry]}).tables[0]
    result = archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    key = keys.table_day_key(spec, spec.period(day), store.prefix)
    rows = 4000
    first = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * (64 << 10)]))
    bomb = pa.table({"id": first, "at": pa.array([day] * rows, pa.date32()), "note": pa.array(["one"] * rows)})
    sink = pa.BufferOutputStream()
    pq.write_table(bomb, sink, compression="zstd", store_schema=False, dictionary_pagesize_limit=1 << 30,
                   row_group_size=rows)
    body = sink.getvalue().to_pybytes()
    assert len(body) < 10_000
    forge_object(s3_client, bucket, key, result.manifest_key, body)
    config = tmp_path / "tables.yaml"
    config.write_text(json.dumps({"tables": [entry]}))  # (JSON is YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(_cli_env(pg, s3, bucket, config), PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", TMPDIR=str(temp_dir))
    out, peak_mb = _cli_peak(env, "verify", "--download", "--day", day.isoformat(), "--json")
    assert out["days"], json.dumps(out)[:1500]
    assert peak_mb < 100, f"verify --download of a {len(body):,}-byte object peaked at +{peak_mb:.0f} MB: {out}"
