"""Hunt 9 (or): a hostile review of c661ba5..f0f0ceb (the JSONL restore's staged and block paths, naming the
refused column, the pending-detach filter by bounds, another_period, the proof of an object decoding too long)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

DAY = dt.date(2024, 3, 10)


def test_a_refused_jsonl_value_is_named_by_its_own_column_not_another_column_of_the_same_type(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A table has two columns of the same enum, ``before`` and ``after`` (a status change). The user restores a
    JSONL day into an existing table whose enum lacks the label ``'gone'`` (dropped since). The day's first row has
    ``after = 'gone'``; its second has ``before = 'gone'``. The INSERT stops at the first row on ``after``:
    'invalid input value for enum ...: "gone"'. What happens: the error names ``column before``: the probe of the
    refused page (restore._name_refused_column) tries each column alone in order and takes the first whose probe
    gives the same *message* -- ``before``'s probe fails on the second row with the very same text (same type,
    same label). What should happen: the column named is the one whose value the load refused, ``after`` (or none
    at all, rather than a wrong one)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.st AS ENUM ('new', 'gone')").format(s))
    conn.execute(sql.SQL("CREATE TYPE {}.st2 AS ENUM ('new')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, before {}.st, after {}.st)").format(s, s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'new', 'gone'), (2, %s, 'gone', 'new')").format(s),
                 (DAY, DAY))
    conn.execute(sql.SQL("CREATE TABLE {}.bad (id int, at date, before {}.st2, after {}.st2)").format(s, s, s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    lines = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert [r["after"] for r in lines][:1] == ["gone"]  # (the load meets the first row's ``after`` first)
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.bad", temp_dir=temp_dir)
    message = str(refused.value)
    assert "column before" not in message, message


def test_a_hash_subpartition_of_another_month_left_pending_detach_does_not_fail_every_day(
        pg, conn, schema, store, temp_dir, s3_client, bucket):
    """``ev`` is range-partitioned by month on ``at`` (``m02``, ``m03``); February's partition is sub-partitioned
    by HASH of ``id`` (``m02_h0``, ``m02_h1``: a tenant spread). An interrupted ``ALTER TABLE m02 DETACH PARTITION
    m02_h0 CONCURRENTLY`` leaves m02_h0 pending detach. The sensor asks for 2024-03-10 (24 rows, all in m03,
    untouched). What happens: refused "m02_h0 is pending detach ...", retried, and so is every day of every month,
    for as long as the detach stays unfinished: archive._Archiving._may_hold_day reads the bounds of m02_h0's
    parent only (m02, by hash: no range, so "it may"), never that m02 -- its ancestor -- holds only February.
    Before c661ba5 the partition's rows were asked and March was archived. What should happen: 2024-03-10 is
    archived with its 24 rows (m02_h0 cannot hold a row of March: its parent's range is February)."""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.m02 PARTITION OF {}.ev FOR VALUES FROM ('2024-02-01 00:00+00') TO "
                         "('2024-03-01 00:00+00') PARTITION BY HASH (id)").format(s, s))
    for r in (0, 1):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.m02 FOR VALUES WITH (MODULUS 2, REMAINDER {})"
                             ).format(s, sql.Identifier(f"m02_h{r}"), s, sql.Literal(r)))
    conn.execute(sql.SQL("CREATE TABLE {}.m03 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-01 00:00+00') TO "
                         "('2024-04-01 00:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT 100 + g, '2024-02-05 05:00+00' FROM generate_series(0, 9) g"
                         ).format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-02-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.m02", f"{schema}.m02_h0")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))


def test_a_refused_jsonl_value_is_named_when_an_earlier_column_name_holds_a_percent_sign(
        conn, schema, store, temp_dir):
    """A table has a column ``share_%`` (a percentage; a legal quoted name) before an enum column ``m``. The user
    restores a JSONL day into an existing table whose enum lacks the label ``'b'`` the rows hold. What happens:
    the error names no column at all ('(InvalidTextRepresentation: invalid input value for enum ...: "b")'):
    restore._name_refused_column now runs each staged-lines probe as ``conn.execute(probe, (), ...)`` -- an
    empty parameter tuple, so psycopg parses the probe for placeholders and refuses the ``%`` in the quoted
    name (a ProgrammingError, taken as "stop probing"). Before f0f0ceb the probe ran without parameters and
    the error said ``column m``. What should happen: ``column m`` is named, whatever the other columns' names."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('a', 'b')").format(s))
    conn.execute(sql.SQL("CREATE TYPE {}.narrow AS ENUM ('a')").format(s))
    conn.execute(sql.SQL('CREATE TABLE {}.ev (id int, at date, "share_%" numeric, m {}.mood)').format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, g / 10.0, 'b' FROM generate_series(1, 5) g").format(s),
                 (DAY,))
    conn.execute(sql.SQL('CREATE TABLE {}.bad (id int, at date, "share_%" numeric, m {}.narrow)').format(s, s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.bad", temp_dir=temp_dir)
    message = str(refused.value)
    assert "enum" in message and "column m:" in message, message


def _forge_jsonl_line(conn, schema, store, temp_dir, s3_client, bucket, line: bytes):
    """A 50-row JSONL day archived, then its object's 4th line replaced by ``line`` and the manifest's digests
    resealed to match (a consistent forgery, or a tool that rewrote the object and its manifest)."""
    from archive_pipeline_tests.helpers import forge_object

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, t text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'x' FROM generate_series(1, 50) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    lines = download(s3_client, bucket, result.key).split(b"\n")
    lines[3] = line
    forge_object(s3_client, bucket, result.key, result.manifest_key, b"\n".join(lines))
    return spec


def test_a_restored_jsonl_line_that_is_json_but_no_object_is_named_damaged_not_blamed_on_column_id(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's JSONL object is rewritten (its manifest resealed) so that one line is ``[1, 2]``: JSON, but no
    row object. The user restores the day into a copy of the table. What happens: "(InvalidParameterValue,
    column id: cannot call populate_composite on an array) ... a type of <table> as this database defines it
    refuses it (an enum lacking one of the archived labels ...); to fix: ... ALTER TYPE ... ADD VALUE": the line is
    JSON, so restore._name_refused_column probes the columns, and every single-column probe of the refused page
    fails with the very same message (it is the line, not a value) -- the first column, ``id``, is blamed.
    What should happen: no column named and no type blamed; the object said not to decode as JSONL rows
    (damaged or altered), as a line that is not JSON at all is (test_hunt9_oh)."""
    spec = _forge_jsonl_line(conn, schema, store, temp_dir, s3_client, bucket, b"[1, 2]")
    conn.execute(sql.SQL("CREATE TABLE {}.back (LIKE {}.ev)").format(sql.Identifier(schema), sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.back", temp_dir=temp_dir)
    message = str(refused.value)
    assert "column id" not in message and "ALTER TYPE" not in message, message


def test_deep_verify_of_a_jsonl_object_whose_lines_are_not_json_is_a_failed_proof_not_a_type_refusal(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day's JSONL object is rewritten with a line that is not JSON (``{not json``) and its manifest resealed
    (size, MD5, SHA-256 match). ``verify --deep`` (and the removal's proof) runs. What happens: it raises "the
    archive ..., which matches its manifest (MD5), holds a value the types of database 'postgres' refuse
    (invalid input syntax for type json ...), so it cannot be loaded there to be proven (no verdict on the
    archive); to fix: prove the day in a database whose types are as they were ... ALTER TYPE ... ADD VALUE":
    verify._load takes every DataError of the load for a type of this database, even the one the restore path
    itself marks as the object's (``not_json``: "its lines are not JSON ...: the object is damaged or was
    altered"). c661ba5 made an object that matches its MD5 but does not decode as recorded a failed proof
    ("altered"); lines that are not JSON do not decode either. What should happen: a failed proof (a returned
    problem naming the object as altered or damaged), no remedy about types."""
    from archive_pipeline.core.verify import deep_verify

    spec = _forge_jsonl_line(conn, schema, store, temp_dir, s3_client, bucket, b"{not json")
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    except ArchiveError as exc:
        raise AssertionError(f"no verdict: {exc}") from None
    assert problems and ("altered" in problems[0] or "damaged" in problems[0]), problems


def test_a_manifest_written_before_periods_restores_into_a_table_configured_in_etc_utc(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day was archived before periods were recorded (its manifest has no ``granularity``, ``timezone`` or
    ``period``: a UTC day, as manifest_period reads it). Since, the operator wrote ``timezone: Etc/UTC`` in the
    table's YAML (the name most containers and hosts report for UTC; the same zone, the same keys and days). The
    user restores the day. What happens: RestoreError "its archive holds the daily period 2024-03-10 in UTC, and
    the table is now configured as daily in Etc/UTC: another period with the same key, not this one's rows;
    ... configure the table as it was archived (None in None)": manifest.another_period (a72e9ef) now reads the
    missing fields as ('daily', 'UTC') and compares zone *names*; the instants, which would tell the same zone,
    are compared only where the manifest records its period bounds -- which a pre-period manifest never does.
    Before a72e9ef such a manifest was "the same". What should happen: the day is restored (a UTC day in
    Etc/UTC is the same period); likewise the archive's re-run and compare must not call it another period."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 23) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = {k: v for k, v in decode_manifest(download(s3_client, bucket, result.manifest_key)).items()
                if k not in ("manifest_sha256", "granularity", "timezone", "period")}
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    assert restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back0", temp_dir=temp_dir).rows == 24
    now = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none",
                    timezone="Etc/UTC")
    restored = restore_day(conn, store, now, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.rows == 24


def test_a_manifest_written_before_periods_refused_as_another_period_names_the_period_to_configure(
        conn, schema, store, temp_dir, s3_client, bucket):
    """A day was archived before periods were recorded (no ``granularity``/``timezone`` in its manifest: a UTC
    day); the table is now configured ``timezone: Europe/Berlin``. The user restores the day. It is refused, rightly
    (another period: a72e9ef), but the remedy says "configure the table as it was archived (None in None) to
    restore that period": restore reads the manifest's raw fields for the remedy, not the period it was just
    judged to hold. What should happen: the remedy names what to configure, "daily in UTC"."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = {k: v for k, v in decode_manifest(download(s3_client, bucket, result.manifest_key)).items()
                if k not in ("manifest_sha256", "granularity", "timezone", "period")}
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    berlin = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none",
                       timezone="Europe/Berlin")
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, berlin, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert "None" not in str(refused.value) and "daily in UTC" in str(refused.value), str(refused.value)
