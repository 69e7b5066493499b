"""Hunt 3 (bb): sequences of operations on one day (archive, change the source, archive again with and without
overwrite, remove, restore, archive after restore, compare, deep verification, a second table sharing the key
prefix), with the invariants checked after every step: the manifest names an object that exists with the
recorded size, MD5 and rows; the object's rows are what its fingerprint says; kept generations are present and
readable; no orphan objects or open uploads; compare and deep verification agree with the truth; and no row of the
day ever exists nowhere (every row ever in the source for the day is in the source or in a kept generation).
Sequences are enumerated in the tests (deterministic). Real PostgreSQL and S3 (moto over HTTP)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import day_prefix, manifest_key, table_day_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.helpers import decompress, download

DAY = dt.date(2024, 3, 10)


def _rows_of_object(s3_client, bucket: str, key: str, compression: str = "zstd") -> list[tuple]:
    """The (id, v) of every row of a JSONL object, as a sorted list (a multiset)."""
    body = decompress(download(s3_client, bucket, key), compression)
    return sorted((r["id"], r["v"]) for r in (json.loads(line) for line in body.split(b"\n") if line))


def _source_rows(conn, schema: str, day: dt.date = DAY) -> list[tuple]:
    return sorted(conn.execute(sql.SQL("SELECT id, v FROM {} WHERE at >= %s AND at < %s").format(
        sql.Identifier(schema, "ev")), (day, day + dt.timedelta(days=1))).fetchall())


class Day:
    """One day of ``<schema>.ev`` (id int, at timestamptz, v text) and everything that must hold of it."""

    def __init__(self, conn, schema: str, spec: TableSpec, store, s3_client, bucket: str):
        self.conn, self.schema, self.spec, self.store, self.s3, self.bucket = conn, schema, spec, store, s3_client, bucket
        self.key = table_day_key(spec, DAY, store.prefix)
        self.ever: set[tuple] = set()  # every row the source ever held for the day
        self.see()

    def see(self) -> None:
        self.ever |= set(_source_rows(self.conn, self.schema))

    def sql(self, statement: str, *params) -> None:
        self.conn.execute(sql.SQL(statement).format(ev=sql.Identifier(self.schema, "ev"),
                                                    s=sql.Identifier(self.schema)), params)
        self.see()

    def manifest(self) -> dict | None:
        return load_manifest(self.store, self.key)

    def listing(self) -> set[str]:
        return {o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=day_prefix(self.key)) for o in page.get("Contents", [])}

    def check(self, step: str) -> None:
        """The invariants, after ``step``."""
        manifest = self.manifest()
        listed = self.listing()
        named: set[str] = set()
        held: set[tuple] = set()
        if manifest is not None:
            named.add(manifest_key(self.key))
            obj = manifest.get("object")
            if obj:
                body = download(self.s3, self.bucket, obj["key"])
                assert len(body) == obj["bytes"] and hashlib.md5(body).hexdigest() == obj["md5"], step
                rows = _rows_of_object(self.s3, self.bucket, obj["key"])
                assert len(rows) == manifest["rows"], step
                named.add(obj["key"])
                held |= set(rows)
            else:
                assert manifest["rows"] == 0, step
            for kept in manifest.get("kept", []):
                assert kept["key"] in listed, f"{step}: kept generation {kept['key']} is gone"
                rows = _rows_of_object(self.s3, self.bucket, kept["key"])
                if kept.get("rows") is not None:
                    assert len(rows) == kept["rows"], step
                named.add(kept["key"])
                held |= set(rows)
        orphans = listed - named
        assert not orphans, f"{step}: objects no manifest names: {sorted(orphans)}"
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        assert not uploads, f"{step}: open uploads {uploads}"
        now = set(_source_rows(self.conn, self.schema))
        lost = self.ever - now - held
        assert not lost, f"{step}: rows of the day in neither the source nor any kept archive: {sorted(lost)}"


@pytest.fixture
def ev(conn, schema) -> TableSpec:
    """Column mode, action delete: 20 rows on DAY (ids 1..20)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00",))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     retention={"keep_days": 1, "action": "delete"})


@pytest.fixture
def dev(conn, schema) -> TableSpec:
    """Declarative with a DEFAULT partition, action drop: 20 rows on DAY in ev_0310."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_default PARTITION OF {}.ev DEFAULT").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(s), (f"{DAY} 00:00+00",))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})




def _late_rows(d: Day, first_id: int, count: int, hour: int = 5) -> None:
    d.sql("INSERT INTO {ev} SELECT %s + g, %s::timestamptz + g * interval '1 s', 'late' || g "
          "FROM generate_series(1, %s) g", first_id, f"{DAY} {hour:02d}:00+00", count)


def _cli_env(pg, s3, bucket: str, tmp_path, table: dict) -> dict:
    import os

    import yaml

    from archive_pipeline_tests.test_cli import ROOT

    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="250")
    return env


# ------------------------------------------------------------------------------------------------
# 1. Overwrite of a removed day whose late rows outnumber the removed ones


def test_overwrite_of_a_removed_day_with_more_late_rows_keeps_the_removed_rows_archive(conn, schema, ev, store,
                                                                                      s3_client, bucket):
    """Archive a day (20 rows), let retention remove it (delete), then 25 late rows of the day arrive (a
    back-dated load). The archive run refuses ("the source now has other rows (25); ... set overwrite (an
    archive that holds more rows than the new one is kept beside it)"), so the user sets overwrite. Was: 25 is
    not fewer than 20, so ``_retire`` lists the removed rows' object under ``superseded`` and deletes it after
    the commit: the 20 removed rows, whose only copy it was, are gone from the bucket (and the source). The
    row count says nothing about whether the new rows include the old ones; for a removed day they never do.
    Should: the removed day's object is kept (``kept``) whatever the new row count: every row the day ever
    had is in the source or in an archive the manifest names."""
    d = Day(conn, schema, ev, store, s3_client, bucket)
    archive_partition(conn, ev, DAY, store)
    d.check("archive")
    assert remove_day(conn, ev, DAY, store).rows == 20
    d.check("remove")
    _late_rows(d, 100, 25)
    with pytest.raises(ArchiveError, match="now has other rows"):
        archive_partition(conn, ev, DAY, store)
    d.check("archive refused")
    assert archive_partition(conn, ev, DAY, store, overwrite=True).rows == 25
    d.check("overwrite")  # fails now: rows 1..20 (the removed ones) are in neither the source nor any archive


# ------------------------------------------------------------------------------------------------
# 2. A lost manifest: the re-archive must keep every stored generation


def test_a_re_archive_after_the_manifest_was_lost_keeps_the_stored_generation(conn, schema, ev, store, s3_client,
                                                                              bucket):
    """Archive a day (20 rows); 5 rows are deleted from the source; then the manifest object is lost (deleted
    by hand, a lifecycle rule on ``*.json``, a bucket sync that skipped it). The next run finds data of the day
    but no manifest and archives the 15 rows as generation 2. README: "without one [a trustworthy manifest],
    stored data stays (it might be the only copy of something), and the manifest a re-archive then writes
    keeps every stored generation under ``kept``". Was: only an *unreadable* manifest gets the stored
    generations listed under ``kept`` (``_retire``: ``existing.raw is None`` returns no kept), so the new
    manifest names generation 1 nowhere, and the very next run of the day (a plain skip) deletes it as a
    leftover: the 5 deleted rows, whose only copy it was, are gone, without overwrite ever being set.
    Should: the new manifest keeps generation 1 (``kept``), and no later run deletes it."""
    d = Day(conn, schema, ev, store, s3_client, bucket)
    first = archive_partition(conn, ev, DAY, store)
    d.sql("DELETE FROM {ev} WHERE id <= 5")
    s3_client.delete_object(Bucket=bucket, Key=manifest_key(d.key))
    second = archive_partition(conn, ev, DAY, store)
    assert (second.rows, second.generation) == (15, 2)
    assert first.key in [k["key"] for k in d.manifest().get("kept", [])], (
        f"the new manifest does not keep {first.key}, the only copy of rows 1..5: {d.manifest().get('kept')}")
    assert archive_partition(conn, ev, DAY, store).skipped
    d.check("the run after")


# ------------------------------------------------------------------------------------------------
# 3. A format change after the day was removed


def test_restore_again_after_an_overwrite_does_not_report_stale_rows_as_already_restored(conn, schema, ev, store,
                                                                                        s3_client, bucket):
    """Archive a day (20 rows) and restore it into a new table ``back`` (its restore mark lists the day). A row
    of the day is corrected in the source and the day archived again with overwrite (generation 2, the same 20
    rows in number). Restoring the day into ``back`` again (the same command, ``--into new`` or ``existing``).
    Was: ``_still_restored`` compares only the row count, so the result is "already restored: back's restore
    mark lists 2024-03-10" (success, nothing checked, ``fingerprint_checked=False``) while ``back`` holds the
    old value, not the archive's: a green restore of rows that are not the archive's. Should: the day's rows in
    the target are compared with the manifest's fingerprint; here they differ, so the restore loads the day
    (and fails naming the other rows already there) or at least does not call it restored."""
    d = Day(conn, schema, ev, store, s3_client, bucket)
    archive_partition(conn, ev, DAY, store)
    restore_day(conn, store, ev, DAY, into="new", target=f"{schema}.back")
    d.sql("UPDATE {ev} SET v = 'corrected' WHERE id = 3")
    assert archive_partition(conn, ev, DAY, store, overwrite=True).generation == 2
    for into in ("new", "existing"):
        try:
            again = restore_day(conn, store, ev, DAY, into=into, target=f"{schema}.back")
        except ArchiveError:
            continue  # refused (the target holds other rows of the day): not a false success
        held = conn.execute(sql.SQL("SELECT v FROM {} WHERE id = 3").format(sql.Identifier(schema, "back"))).fetchall()
        assert held == [("corrected",)], (
            f"into={into}: restore says {again.check!r}, but back holds {held} for id 3, not the archive's row")


# ------------------------------------------------------------------------------------------------
# 5. A column added after the day was removed


@pytest.mark.parametrize("table", ["ev", "dev"], ids=["column_delete", "declarative_drop_with_default"])
def test_a_removed_day_is_proven_by_its_archive_after_a_column_is_added(conn, schema, table, request, store):
    """Archive a day, let retention remove it, then the table gets a new column (``ALTER TABLE ev ADD COLUMN
    extra int``, an everyday migration within a 90-day retention window). No row of the day is in the source.
    README: "A day that retention removed from the source (its manifest marked removed: done, and no rows of it
    back in the source) is proven by its archive alone". Was: ``deep_verify`` (``verify --deep``, the
    ``deep_check`` verdict) compares the source's column names before it counts the source's rows, and reports
    "the source's columns are now [...], the archive's [...] ... archive the day again (overwrite)" for every
    removed day, a remedy that is refused (DayRemovedError: nothing to archive). With a DEFAULT partition,
    ``compare`` also calls each such day "differs" (exit 1) instead of "not-in-source". Should: the removed day
    is proven by its archive (no problem), and compare says not-in-source."""
    spec = request.getfixturevalue(table)
    archive_partition(conn, spec, DAY, store)
    remove_day(conn, spec, DAY, store)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra int").format(sql.Identifier(schema, "ev")))
    with pytest.raises(ArchiveError, match="removed"):  # the remedy the proof gives is refused
        archive_partition(conn, spec, DAY, store, overwrite=True)
    problems = deep_verify(conn, store, spec, DAY)
    verdicts = [c.result for c in compare_days(conn, spec, store, [DAY])]
    assert (problems, verdicts) == ([], ["not-in-source"])


# ------------------------------------------------------------------------------------------------
# 6. The command line after a late row landed in the DEFAULT partition of a dropped day


def test_cli_archive_and_list_see_a_late_row_in_the_default_partition_of_a_dropped_day(pg, s3, bucket, conn, schema,
                                                                                        tmp_path):
    """A declarative table with a DEFAULT partition; a day archived and pruned (action drop: its partition is
    dropped). A late row of the day arrives and lands in the DEFAULT partition. ``compare`` sees it (differs:
    1 source row, 20 archived), ``verify --deep`` too. Was: ``archive --day D --overwrite`` answers "no-data:
    no data for this day in PostgreSQL", exit 0, and archives nothing, and ``list --check-source`` shows the
    day as plainly archived ("dropped from the source"), exit 0: the row is in no archive and the command line
    can neither see nor archive it (``plan.present_days`` asks only the catalog's bounded partitions, where
    ``compare_days`` also looks in the DEFAULT partition). Should: archive the row (the core's
    ``archive_partition`` does: generation 2, the removed rows kept) and list it as changed."""
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.test_cli import cli

    day = utc_today() - dt.timedelta(days=3)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)"
                         ).format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_day PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
        s, s, sql.Literal(f"{day} 00:00+00"), sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_default PARTITION OF {}.ev DEFAULT").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(s), (f"{day} 00:00+00",))
    env = _cli_env(pg, s3, bucket, tmp_path, {
        "name": f"{schema}.ev", "day_column": "at", "start_date": day.isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 1, "action": "drop"}})
    d = day.isoformat()
    assert cli(env, "archive", "--day", d).returncode == 0
    pruned = cli(env, "prune", "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["days"][0]["status"] == "removed", pruned.stdout
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (99, %s, 'late')").format(s), (f"{day} 05:00+00",))
    compared = cli(env, "compare", "--day", d, "--json")
    assert compared.returncode == 1 and json.loads(compared.stdout)["days"][0]["result"] == "differs"
    wrong = []
    listed = json.loads(cli(env, "list", "--check-source", "--day", d, "--json").stdout)["days"][0]
    if listed["state"] != "changed":
        wrong.append(f"list --check-source: {listed['state']} ({listed['note']})")
    archived = json.loads(cli(env, "archive", "--day", d, "--overwrite", "--json").stdout)["days"][0]
    if (archived["status"], archived.get("rows")) != ("archived", 1):
        wrong.append(f"archive --overwrite: {archived['status']} ({archived.get('message')})")
    assert not wrong, "; ".join(wrong)


# ------------------------------------------------------------------------------------------------
# Guards (pass now): what held across the sequences tried


def test_guard_drop_restore_archive_remove_cycle_keeps_every_invariant(conn, schema, dev, store, s3_client, bucket):
    """Declarative with a DEFAULT partition, action drop: archive, remove (the partition dropped), restore into
    the original (the partition re-created), archive (skipped: the same rows), compare, deep verification,
    remove again, restore again. After every step the manifest names a whole object of exactly its rows, nothing
    else of the day is stored, no upload is open, no row is lost, and compare / deep verification tell the
    truth."""
    d = Day(conn, schema, dev, store, s3_client, bucket)
    archive_partition(conn, dev, DAY, store)
    d.check("archive")
    for cycle in range(2):
        assert remove_day(conn, dev, DAY, store).rows == 20
        d.check(f"remove {cycle}")
        assert [c.result for c in compare_days(conn, dev, store, [DAY])] == ["not-in-source"]
        assert deep_verify(conn, store, dev, DAY) == []
        assert restore_day(conn, store, dev, DAY, into="original").rows == 20
        d.check(f"restore {cycle}")
        assert archive_partition(conn, dev, DAY, store).skipped
        d.check(f"archive after restore {cycle}")
        assert [c.result for c in compare_days(conn, dev, store, [DAY])] == ["equal"]
        assert deep_verify(conn, store, dev, DAY) == []
    assert d.manifest()["generation"] == 1


def test_guard_a_second_table_sharing_the_days_key_prefix_is_never_touched(conn, schema, store, s3_client, bucket):
    """Two tables whose keys share the day's listing prefix (key_template ``{prefix}/{schema}/{date}.{table}.{ext}``:
    ``2024-03-10.ev.jsonl.zst`` and ``2024-03-10.ev2.jsonl.zst``). ``ev`` goes through archive, rows deleted,
    overwrite (fewer rows: kept), removal, late rows, overwrite; ``ev2``'s archive is byte for byte as it was,
    and still proven."""
    template = "{prefix}/{schema}/{date}.{table}.{ext}"
    specs = {}
    for name in ("ev", "ev2"):
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(
            sql.Identifier(schema, name)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                             "FROM generate_series(1, 20) g").format(sql.Identifier(schema, name)), (f"{DAY} 00:00+00",))
        specs[name] = TableSpec(name=f"{schema}.{name}", day_column="at", start_date="2024-03-01", key_template=template,
                                retention={"keep_days": 1, "action": "delete"})
    other = archive_partition(conn, specs["ev2"], DAY, store)
    before = {k: download(s3_client, bucket, k) for k in (other.key, manifest_key(other.key))}
    spec = specs["ev"]
    d = Day(conn, schema, spec, store, s3_client, bucket)
    archive_partition(conn, spec, DAY, store)
    d.sql("DELETE FROM {ev} WHERE id <= 5")
    archive_partition(conn, spec, DAY, store, overwrite=True)
    remove_day(conn, spec, DAY, store)
    _late_rows(d, 100, 3)
    archive_partition(conn, spec, DAY, store, overwrite=True)
    assert archive_partition(conn, spec, DAY, store).skipped
    ours = {manifest_key(d.key), d.manifest()["object"]["key"], *(k["key"] for k in d.manifest()["kept"])}
    listed = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=day_prefix(d.key))["Contents"]}
    assert listed == ours | set(before)
    assert {k: download(s3_client, bucket, k) for k in before} == before
    assert deep_verify(conn, store, specs["ev2"], DAY) == []
