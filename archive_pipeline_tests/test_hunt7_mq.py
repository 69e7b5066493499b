"""Hunt 7 (mq): regressions and holes in this session's product changes (d5e3cd4..)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 3) -> TableSpec:
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, 'n' || g FROM generate_series(1, %s) g", (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)


def test_a_run_of_the_previous_version_holding_the_day_keeps_this_version_out(pg, conn, schema, store, s3_client,
                                                                               bucket):
    """A deployment is upgraded while a run of the previous version (d5e3cd4: the lock was
    pg_try_advisory_lock(hashtext('archive_pipeline:<table>'), <day's ordinal>)) still archives, removes or
    restores a table-day: a Dagster run launched before the code location reloaded, a CLI on another host, a
    removal schedule of a second code location. What happens: af9f032 moved the lock to one 64-bit key
    (blake2b of name and day), a different advisory lock (pg_locks objsubid 1, not 2), so the new version's run
    takes the same day at once and archives it alongside the old one (the "one run per table-day, whatever
    launched it" promise broken for the whole rollout; a removal of the old version may drop the partition under
    a new archive run). What should happen: during the transition the new version also takes (or at least
    checks) the previous key, and fails fast, retryable, naming the other run, with nothing written."""
    spec = _events(conn, schema)
    with pg.connect() as old_run:
        assert old_run.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)",
                               (f"archive_pipeline:{spec.name}", DAY.toordinal())).fetchone()[0]
        with pytest.raises(ArchiveError, match="being archived, removed or restored by another run") as failure:
            archive_partition(conn, spec, DAY, store)
        assert failure.value.retryable is True
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def _rename_during_read(pg, monkeypatch, statement: str):
    """Run ``statement`` in another session once the day's fingerprint is taken, just before its rows are read."""
    from archive_pipeline.core import archive

    original = archive.write_day
    other = pg.connect()
    other.autocommit = True

    def meanwhile(*args, **kwargs):
        other.execute(statement)
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "write_day", meanwhile)
    return other


def test_a_regprocedure_day_fails_when_an_argument_type_it_prints_is_renamed_during_its_read(pg, conn, schema, store,
                                                                                          temp_dir, monkeypatch):
    """An audit table ``audit (id int, at timestamptz, fn regprocedure)`` whose values name
    ``s.price(s.money_amount)`` (regprocedure prints the argument types) is archived while a migration renames that
    type (``ALTER TYPE s.money_amount RENAME TO amount``). What happens: the day is archived green; the fingerprint
    hashed ``price(money_amount)``, the rows say ``price(amount)``: the manifest does not describe its own rows
    (deep_verify then says "the archive's rows are not the ones recorded" of an archive nobody touched).
    source.printed_names (a4b0355) tracks only the oids the day's values name, in pg_proc, with their schemas, not
    the types a regprocedure (or regoperator) value prints inside its parentheses. What should happen: as for a
    renamed function or schema, the run fails, retryable, "a name a regprocedure value prints ... was changed
    while the day was read", nothing published."""
    from archive_pipeline.core.errors import SourceError

    s = f'"{schema}"'
    conn.execute(f"CREATE DOMAIN {s}.money_amount AS numeric")
    conn.execute(f"CREATE FUNCTION {s}.price(a {s}.money_amount) RETURNS numeric LANGUAGE sql AS 'SELECT a'")
    conn.execute(f"CREATE TABLE {s}.audit (id int, at timestamptz, fn regprocedure)")
    conn.execute(f"INSERT INTO {s}.audit SELECT g, '2024-03-10 01:00+00', '{s}.price({s}.money_amount)'::regprocedure "
                 "FROM generate_series(1, 5) g")
    spec = TableSpec(name=f"{schema}.audit", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "column"})
    other = _rename_during_read(pg, monkeypatch, f"ALTER DOMAIN {s}.money_amount RENAME TO amount")
    try:
        with pytest.raises(SourceError, match="was changed while the day was read") as failure:
            archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        assert failure.value.retryable is True
    finally:
        other.close()


def test_a_regclass_day_fails_when_a_rename_hides_the_relation_its_values_name_unqualified(pg, conn, schema, store,
                                                                                         temp_dir, monkeypatch):
    """A role whose search_path is ``front, s`` archives ``s.audit (id int, at timestamptz, rel regclass)``, every
    value ``s.orders``, which prints as ``orders`` (visible on the path). During the read a migration renames
    ``front.staging`` to ``front.orders``: ``s.orders`` is no longer visible and prints ``s.orders``. What happens
    (a regression of a4b0355): the day is archived green, its fingerprint over ``orders``, its rows ``s.orders``.
    Before, any rename in pg_class failed the run (retryable); now only a rename of an oid the day's values name
    does, and this rename changes how those values print without renaming them. What should happen: the run
    fails, retryable, "a name a regclass value prints ... was changed while the day was read"."""
    from archive_pipeline.core.errors import SourceError

    front = f"{schema}_front"
    conn.execute(f'CREATE SCHEMA "{front}"')
    try:
        conn.execute(f'CREATE TABLE "{front}".staging (id int)')
        conn.execute(f'CREATE TABLE "{schema}".orders (id int)')
        conn.execute(f'CREATE TABLE "{schema}".audit (id int, at timestamptz, rel regclass)')
        conn.execute(f"INSERT INTO \"{schema}\".audit SELECT g, '2024-03-10 01:00+00', '\"{schema}\".orders'::regclass "
                     "FROM generate_series(1, 5) g")
        conn.execute(f'SET search_path = "{front}", "{schema}"')
        assert conn.execute(f"SELECT rel::text FROM \"{schema}\".audit LIMIT 1").fetchone()[0] == "orders"
        spec = TableSpec(name=f"{schema}.audit", day_column="at", start_date=DAY, format="csv",
                         partitioning={"mode": "column"})
        other = _rename_during_read(pg, monkeypatch, f'ALTER TABLE "{front}".staging RENAME TO orders')
        try:
            with pytest.raises(SourceError, match="was changed while the day was read") as failure:
                archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
            assert failure.value.retryable is True
        finally:
            other.close()
    finally:
        conn.execute("RESET search_path")
        conn.execute(f'DROP SCHEMA "{front}" CASCADE')


@pytest.mark.parametrize("encoding, value", [("EUC_JP", '{"name": "\\u3042\\u308a\\u304c\\u3068\\u3046"}'),
                                             ("EUC_KR", '{"name": "\\ud55c\\uad6d"}'),
                                             ("EUC_CN", '{"name": "\\u4e2d\\u6587"}')], ids=["EUC_JP", "EUC_KR", "EUC_CN"])
def test_a_json_escape_of_a_character_a_multibyte_databases_encoding_has_is_archived(encoded_db, store, temp_dir,
                                                                                    encoding, value):
    """An EUC_JP (or EUC_KR, EUC_CN) database holds ``json`` written by a serializer that escapes everything beyond
    ASCII (Python's json.dumps default): ``"\\u3042..."`` (hiragana), ``"\\ud55c\\uad6d"``, ``"\\u4e2d\\u6587"``,
    characters each of those encodings has, which json_populate_record reads back there. What happens: JSONL
    refuses the day ("a \\u escape of a character that this database's encoding, EUC_JP, does not have"):
    05fd29b checks the repertoire only of single-byte encodings (jsonl._repertoire_escapes returns None for a
    multibyte one, and every escape beyond ASCII is refused), the same false refusal test_hunt7_mb reported for
    WIN1252, left in place for every multibyte server encoding. What should happen: only an escape of a character
    the encoding lacks is refused (PostgreSQL's own conversion can be asked); this day archives and restores."""
    db = encoded_db(encoding)
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json), (2, '2024-03-10', '[1]')", (value,))
    assert db.execute("SELECT (j->>'name') IS NOT NULL FROM ev WHERE id = 1").fetchone()[0]  # the encoding has them
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl")
    assert archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir)).rows == 2
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 2 and restored.fingerprint_checked
    assert db.execute("SELECT j::text FROM back WHERE id = 1").fetchone()[0] == value


def test_deep_verification_whose_temp_dir_is_missing_names_table_day_and_directory(conn, schema, store, temp_dir,
                                                                                    tmp_path):
    """A user proves a day with ``deep_verify(conn, store, spec, day, temp_dir="/scratch/verify")`` (the Dagster
    blocking check and ``verify --deep`` do the same with their temp_dir / TMPDIR) where that directory does not
    exist (a volume not mounted yet, a typo). What happens: a bare ``FileNotFoundError: [Errno 2] No such file or
    directory: '/scratch/verify/archive-pipeline-....verify'`` escapes deep_verify: no ArchiveError, no table, no
    day, no remedy, not typed as local (verify's handlers catch psycopg.Error and ArchiveError only; the temp file
    is created by sink.temp_archive_file before any of them). bbc1f9a made the archive name the temp directory
    and restore already does ("no temp file for the download: the temp directory does not exist ... create it,
    or point temp_dir at a directory that exists"); deep verification was left out. What should happen: a
    non-retryable local ArchiveError naming the table, the day and the directory, as archive and restore give."""
    s = f'"{schema}"'
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '2024-03-10')")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    from archive_pipeline.core.verify import deep_verify

    missing = tmp_path / "not-mounted"
    with pytest.raises(ArchiveError) as failure:
        deep_verify(conn, store, spec, DAY, temp_dir=str(missing))
    assert failure.value.retryable is False
    assert spec.name in str(failure.value) and DAY.isoformat() in str(failure.value)
    assert str(missing) in str(failure.value)
