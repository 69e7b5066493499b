"""Hunt 10 (pc): the source or target changes while an operation runs."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def _enum_table(conn, schema: str, fmt: str = "jsonl") -> TableSpec:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'ok', 'happy')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, m {}.mood)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 01:00+00', (ARRAY['sad','ok','happy'])[1 + g % 3]::{}.mood "
                         "FROM generate_series(1, 6) g").format(s, s))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt,
                     partitioning={"mode": "column"})


def _after_load(pg, monkeypatch, statement: str):
    """Run ``statement`` in another session right after deep verification loaded the archived rows back (and before
    it fingerprints them)."""
    from archive_pipeline.core import restore

    original = restore.load_into
    other = pg.connect()
    other.autocommit = True

    def then(*args, **kwargs):
        out = original(*args, **kwargs)
        other.execute(statement)
        return out

    monkeypatch.setattr(restore, "load_into", then)
    return other


def test_an_enum_label_renamed_while_deep_verification_loads_the_archive_is_no_verdict_of_an_altered_archive(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A user proves a JSONL day with an enum column (``verify --deep``, or the removal's proof) while a migration
    renames one of the enum's labels (``ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'``, which takes no lock the
    proof waits for). What happens: the archived rows were loaded into the temporary table of the recorded types
    (their labels stored as the enum's values), the rename commits, and the loaded rows are fingerprinted printing
    the new label: deep_verify returns "the archive's rows are not the ones recorded" (an altered archive), "the
    source's rows are not the archive's", and "no single row differs". The archive is intact (the same rename made
    before the proof gives no verdict: "holds a value the types refuse ... no verdict on the archive"), and the
    archive run itself fails such a rename retryably ("labels are printed from the catalog as committed"). What
    should happen: no verdict on the archive (a retryable error, as the archive's read says for the same rename),
    or a proof whose sides print the labels alike; never an intact archive called altered."""
    from archive_pipeline.core.verify import deep_verify

    spec = _enum_table(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    other = _after_load(pg, monkeypatch, f'ALTER TYPE "{schema}".mood RENAME VALUE \'ok\' TO \'fine\'')
    try:
        problems = deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir))
    except ArchiveError:  # no verdict on the archive: what should happen
        return
    finally:
        other.close()
    assert not any("not the ones recorded" in p for p in problems), problems


def test_an_enum_label_renamed_while_a_restore_loads_is_not_blamed_on_an_altered_archive(pg, conn, schema, store,
                                                                                        temp_dir, monkeypatch):
    """A user restores a JSONL day with an enum column into a new table (``restore --into new``) while a migration
    renames one of the enum's labels (``ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'``: no lock the restore holds
    keeps it out). What happens: the rows load (their labels stored as enum values), the rename commits, and the
    check fingerprints the loaded rows printing the new label: FingerprintMismatchError, not retryable, "The archive
    does not hold the rows it was proven to hold (altered after it was written)". The archive is intact (the same
    rename before the restore is refused naming the enum that lacks the archived label). What should happen: the
    restore is rolled back saying the type changed while it ran (a retry then names the missing label), not
    that the archive was altered."""
    from archive_pipeline.core.restore import restore_day

    spec = _enum_table(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    other = _after_load(pg, monkeypatch, f'ALTER TYPE "{schema}".mood RENAME VALUE \'ok\' TO \'fine\'')
    try:
        with pytest.raises(ArchiveError) as failure:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    finally:
        other.close()
    assert "altered after it was written" not in str(failure.value), failure.value
