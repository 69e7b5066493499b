"""This session's own checks of its changes (hunt 7)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.formats.jsonl import _SINGLE_BYTE, _repertoire_escapes
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)


def _codepoints(alternatives: str | None) -> set[int]:
    """The code points of _repertoire_escapes' "00a[0-9]|20a[c]" alternatives."""
    points: set[int] = set()
    for group in (alternatives or "").split("|"):
        if group:
            head, tails = group[:3], group[4:-1]
            points.update(int(head + tail, 16) for tail in tails)
    return points


def test_the_escapes_kept_per_single_byte_encoding_are_postgresql_s_own_repertoire(conn):
    """The JSONL refusal of a json \\u escape a non-UTF8 database cannot hold takes each single-byte encoding's
    characters from Python's codecs. They must be exactly the characters PostgreSQL's own conversion gives that
    encoding's bytes 0x80..0xFF: one more, and a day archives green that cannot be restored there."""
    for encoding in sorted(_SINGLE_BYTE):
        theirs: set[int] = set()
        for byte in range(0x80, 0x100):
            try:
                with conn.transaction():
                    text = conn.execute("SELECT pg_catalog.convert_from(pg_catalog.convert(%s::bytea, %s, 'UTF8'), "
                                        "'UTF8')", (bytes([byte]), encoding)).fetchone()[0]
            except Exception:  # noqa: BLE001 - a byte without a character in that encoding
                continue
            theirs.update(ord(c) for c in text if ord(c) >= 0x80)
        assert _codepoints(_repertoire_escapes(encoding)) == theirs, encoding


@pytest.mark.parametrize("encoding, kept, lacking", [("WIN1252", "\\u20ac \\u00e9", "\\u0101"),
                                                     ("KOI8R", "\\u0416", "\\u00e9"),
                                                     ("LATIN1", "\\u00E9", "\\u20ac")])
def test_a_json_escape_the_encoding_holds_archives_and_restores_one_it_lacks_is_refused(
        encoding, kept, lacking, encoded_db, store, temp_dir):  # noqa: F811
    """A WIN1252 (KOI8R, LATIN1) database holds json values with \\u escapes of characters it has (the euro sign in
    WIN1252, Cyrillic in KOI8R). Was: every escape beyond ASCII refused outside LATIN1 (a false red that sends the
    user to another format). Should: those archive as JSONL and restore into their own database exactly; an
    escape of a character the encoding lacks is still refused, naming the column and the encoding."""
    db = encoded_db(encoding)
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    value = '{"a": "%s", "b": "x\\\\u0101"}' % kept  # an escaped backslash before u0101 is no escape
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json), (2, '2024-03-10', '[1]')", (value,))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl", compression="zstd")
    archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir))
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 2 and restored.fingerprint_checked
    assert db.execute("SELECT j::jsonb = %s::jsonb FROM back WHERE id = 1", (value,)).fetchone()[0]
    db.execute("INSERT INTO ev VALUES (3, '2024-03-11', %s::json)", ('{"c": "%s"}' % lacking,))
    with pytest.raises(ArchiveError) as refused:
        archive_partition(db, spec, DAY + dt.timedelta(days=1), store, temp_dir=str(temp_dir))
    assert "'j'" in str(refused.value) and encoding in str(refused.value), refused.value


def test_a_json_escape_an_euc_jp_database_lacks_is_refused_naming_the_column(encoded_db, store, temp_dir):  # noqa: F811
    """In an EUC_JP database a json value holds the escape of an emoji (a surrogate pair: U+1F600, which EUC_JP has
    no character for). JSONL archives a value holding such an escape only where the database can parse it back,
    as a restore will (it converts the escape into EUC_JP): here the day is refused, naming the column, and
    nothing is stored."""
    db = encoded_db("EUC_JP")
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json)", ('{"a": "\\ud83d\\ude00"}',))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl", compression="zstd")
    with pytest.raises(ArchiveError) as refused:
        archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir))
    assert "'j'" in str(refused.value) and not refused.value.retryable, refused.value
    assert "EUC_JP" in str(refused.value) and "csv or parquet" in str(refused.value), refused.value
    assert store.client.list_objects_v2(Bucket=store.bucket).get("KeyCount", 0) == 0
