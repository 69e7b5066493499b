"""Hunt 12 (ra): a review of the previous session's fixes (ead2d28..c7b4480): regressions they introduced and holes
at their edges. Real PostgreSQL and moto S3 over HTTP. Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

DAY = dt.date(2024, 3, 10)


def _run(conn, schema: str, statement: str) -> None:
    conn.execute(statement.replace("S.", sql.Identifier(schema).as_string(conn) + "."))


def test_restore_into_original_of_a_day_table_with_its_own_column_after_the_parent_gained_one_is_not_refused(
        conn, schema, store, temp_dir):
    """A naming-mode table ``S.ev (id, at, note)`` whose day table ``ev_20240310`` has a column of its own
    (``CREATE TABLE S.ev_20240310 (batch int) INHERITS (S.ev)``), 5 rows; archived, removed by retention ``drop``.
    Since then the application's table gained a column (``ALTER TABLE S.ev ADD COLUMN region text``): nothing was
    renamed or dropped. The user restores the day ``--into original``.

    What happens: ``_refuse_hidden_columns`` (hunt-11 qr fix) takes "the parent has a column the archive lacks
    (region) and lacks one it has (batch)" for a rename and refuses: "goes back under S.ev, which has no column(s)
    ['batch'] the archive has (renamed or dropped since) ... give S.ev the column(s) ['batch'] again": false (S.ev
    never had ``batch``: it was the day table's own, out of S.ev's sight when archived too), and its remedy changes
    the application's table. Any column added to the parent since makes every such day unrestorable this way.

    What should happen: the day table is created again as it was (``batch`` its own), under S.ev (``region`` NULL
    for its rows), the 5 rows restored. Fix idea: record which archived columns were inherited (attinhcount > 0)
    in the manifest's table definition and refuse only such a column the parent lacks now; a column the parent
    gained says nothing of a rename."""
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
    _run(conn, schema, "ALTER TABLE S.ev ADD COLUMN region text")
    try:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        raise AssertionError(f"restore into original refused: {exc}") from None
    assert conn.execute(sql.SQL("SELECT count(*), min(batch), count(region) FROM {}").format(
        sql.Identifier(schema, "ev_20240310"))).fetchone() == (5, 7, 0)


def _cli(env: dict[str, str], *args: str):
    from click.testing import CliRunner

    from archive_pipeline.cli import main

    done = CliRunner(env=env).invoke(main, list(args))
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done


def _env(pg, s3, bucket, config) -> dict[str, str]:
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250"}


def test_a_table_name_inside_a_failure_message_is_not_reworded_by_the_cli(pg, s3, bucket, conn, schema, s3_client,
                                                                         tmp_path):
    """A table called ``imports (overwrite)`` (hunt-11 qb: PostgreSQL takes any text as a quoted name), its day
    archived; then its data object is lost from the bucket. ``archive-pipeline verify`` (and ``--json``) reports the
    day's problems, which name the object's key and so the table.

    What happens: the qb fix prints the table *column* verbatim, but the problem lines and remedies (core messages)
    still go through ``_for_the_cli`` whole, names and keys inside them included: the key is shown as
    ``.../imports (--overwrite)/...``, a key that does not exist in the bucket (pasted into ``aws s3 ls`` it finds
    nothing), and the remedy's pasteable commands become ``archive-pipeline compare --table
    '<schema>.imports (--overwrite)' ...`` and ``archive --table '<schema>.imports (--overwrite)' ... --overwrite``,
    which name a table that does not exist (refused when pasted); ``--json``'s ``problems`` and ``remedy`` carry the
    same altered names (``_worded`` rewords every string under those keys).

    What should happen: names and keys are printed as they are wherever they appear, inside messages too; only the
    core's own phrasing is reworded. Fix idea: reword the core's message templates (or a message with its names
    masked out: substitute the table names and keys the message was built with by placeholders, reword, put them
    back), never a finished message's names."""
    import yaml

    name = "imports (overwrite)"
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.{name}", "day_column": "at",
                                                  "start_date": DAY.isoformat()}]}), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    assert _cli(env, "archive", "--day", DAY.isoformat()).exit_code == 0
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="archive/")["Contents"]
    data = [o["Key"] for o in listed if not o["Key"].endswith(".manifest.json")]
    assert len(data) == 1 and name in data[0], listed
    s3_client.delete_object(Bucket=bucket, Key=data[0])
    for args in (("verify", "--day", DAY.isoformat()), ("verify", "--json", "--day", DAY.isoformat())):
        shown = _cli(env, *args)
        assert shown.exit_code != 0, shown.stdout
        assert name in shown.stdout, shown.stdout
        assert "(--overwrite)" not in shown.stdout, shown.stdout


def test_a_schema_name_with_a_line_feed_inside_a_failure_message_does_not_split_its_line(pg, s3, bucket, conn, s3_client,
                                                                                         tmp_path):
    """A schema called ``ops\\nlegacy`` (a line feed in it; hunt-11 qb), its table ``t`` keyed by the table alone
    (``{prefix}/{table}/{date}.{ext}``), the day archived; then its data object is lost. ``verify`` reports it.

    What happens: the qb fix escapes control characters, line feeds and tabs too, only in the cells and lines that
    are names (``_verbatim``); a core message goes through ``_printable``, which leaves line feeds and tabs raw. The
    remedy line "to fix: ... archive-pipeline compare --table 'ops<LF>legacy.t' ..." is split in two: the second
    line starts with ``legacy.t' --day ...``, a line that reads as another table's, and the pasteable command is
    broken across lines.

    What should happen: a name's line feed is shown escaped (``ops\\nlegacy``, and a command quoted so a shell reads
    it back: ``$'ops\\nlegacy.t'``) wherever the name is printed, inside messages too. Fix idea: escape the names a
    message is built with (or every control character but the message's own line breaks) before printing."""
    import yaml

    schema_name = "ops\nlegacy"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
    table = sql.Identifier(schema_name, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00')").format(table))
    try:
        config = tmp_path / "tables.yaml"
        config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema_name}.t", "day_column": "at",
                                                      "start_date": DAY.isoformat(),
                                                      "key_template": "{prefix}/{table}/{date}.{ext}"}]}),
                          encoding="utf-8")
        env = _env(pg, s3, bucket, config)
        assert _cli(env, "archive", "--day", DAY.isoformat()).exit_code == 0
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="archive/")["Contents"]
        data = [o["Key"] for o in listed if not o["Key"].endswith(".manifest.json")]
        assert len(data) == 1, listed
        s3_client.delete_object(Bucket=bucket, Key=data[0])
        shown = _cli(env, "verify", "--day", DAY.isoformat())
        assert shown.exit_code != 0, shown.stdout
        assert "to fix" in shown.stdout, shown.stdout
        split = [line for line in shown.stdout.splitlines() if line.startswith("legacy")]
        assert not split, shown.stdout
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema_name)))


def test_the_removal_jobs_proof_of_a_removed_day_refuses_an_archive_holding_the_next_days_rows(
        conn, schema, archive_env, store, s3_client, bucket):
    """Day D was archived, proven and removed by retention (delete): its archive is the only copy. Then a restore
    of the bucket from backup puts day D+1's object at D's key with D+1's manifest edited to be D's (everything
    consistent: sizes, digests, rows, fingerprint). The hunt-11 qw fix (f64b26a) makes ``deep_verify`` (CLI
    ``verify --deep``) and restore refuse it: 17 rows dated 2024-03-11 are not 2024-03-10's archive.

    What happens: the day's removal job (Dagster, ``Remove_``, the retention schedule's run of a removed day) proves
    a removed day with ``verify_archive(..., deep=True)``, digests and row count only, not ``deep_verify``: it
    records ``archive_proven`` PASSED ("removed from the source") for an archive that holds none of the day's rows.
    The sibling path of the fix (Dagster vs the command line) was left out.

    What should happen: ``archive_proven`` is recorded failed, naming the rows outside the day (as ``verify
    --deep`` says). Fix idea: the removed day's proof in retention_assets._removing also loads the downloaded
    object and counts rows_outside_period (or calls deep_verify, whose removed-day path does)."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.retention_assets import PROVEN_CHECK, removal_job_name
    from archive_pipeline_tests.helpers import download

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 hour', "
                         "md5(g::text) FROM generate_series(1, 40) g").format(t))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-01",
        "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    d, e = DAY, DAY + dt.timedelta(days=1)
    ours, theirs = archive_partition(conn, spec, d, store), archive_partition(conn, spec, e, store)
    assert (ours.rows, theirs.rows) == (23, 17)
    remove_day(conn, spec, d, store, removed_by="test")
    # day D+1's object and manifest put at D's keys, the manifest saying it is D's (hunt-11 qw's forgery)
    body = download(s3_client, bucket, theirs.key)
    s3_client.put_object(Bucket=bucket, Key=ours.key, Body=body)
    their_manifest = decode_manifest(download(s3_client, bucket, theirs.manifest_key))
    our_manifest = decode_manifest(download(s3_client, bucket, ours.manifest_key))
    head = s3_client.head_object(Bucket=bucket, Key=ours.key)
    forged = {**their_manifest, **{k: our_manifest[k] for k in ("day", "table", "period", "removed")
                                   if k in our_manifest}}
    forged["object"] = {**their_manifest["object"], "key": our_manifest["object"]["key"],
                        "uri": our_manifest["object"]["uri"], "etag": head["ETag"].strip('"')}
    forged.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=ours.manifest_key, Body=encode_manifest(forged))

    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=d.isoformat(), raise_on_error=False)
        proofs = [ev.dagster_event.event_specific_data for ev in instance.all_logs(result.run_id)
                  if ev.dagster_event is not None
                  and ev.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and ev.dagster_event.event_specific_data.check_name == PROVEN_CHECK]
    assert proofs, "no archive_proven verdict recorded"
    assert not any(p.passed for p in proofs), [p.description for p in proofs]
