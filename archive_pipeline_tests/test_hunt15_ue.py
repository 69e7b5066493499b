"""Hunt 15 (ue): a review of 3a5cf88 (the commit's `withdrawn` refusals, a range restore cancelled while finishing
its first day, '{#' in a templated inline string, a removal's HEAD with the proven ETag) and its interplay with
340ffd4 and 95970ac."""

from __future__ import annotations

import pytest

import sys

from psycopg import sql

from archive_pipeline_tests.test_hunt3_o import DAYS


def _late_overwrite_setup(conn, schema, store):
    """A day archived (300 rows), then a late row: an `archive --overwrite` of it writes a second generation."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline_tests.test_hunt3_o import small_table

    small_table(conn, schema, rows=300)
    spec = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at",
                                     "start_date": DAYS[0].isoformat()}]}).tables[0]
    first = archive_partition(conn, spec, DAYS[0], store)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (99999, '2024-03-10 05:00+00', 'late')").format(
        sql.Identifier(schema, "ev")))
    return spec, first


def test_an_overwrite_refused_as_changed_whose_withdrawal_delete_fails_leaves_its_object_untold(
        conn, schema, store, s3_client, bucket, monkeypatch):
    """A day archived; late rows; `archive --overwrite` uploads the new generation g2. Just before its commit,
    _refuse_replaced finds the day's manifest changed (a removal's pending mark written on the primary) and deletes
    g2 with ``store.delete_quietly(result.key)`` -- without the error, so a failed DELETE (a 503 that outlasts the
    client's retries) is only logged -- then raises "... changed ...; nothing was replaced" marked ``withdrawn``.
    Since 3a5cf88, _commit trusts that mark and no longer withdraws g2 itself (95970ac's _withdraw_unnamed would have
    tried the DELETE again, or noted the object as left). Now: g2 stays in the bucket, named by no manifest, and
    the error carries no word of it (no "cleanup: could not delete ..." note): "nothing was replaced" while a
    complete unnamed object was left. Expected: the object is gone (tried again), or the error says it is left and
    what to do (README: nothing left half written; a failure says what the day is left as).
    Fix idea: pass the error to delete_quietly in _refuse_replaced's changed path (``delete_quietly(key, changed)``
    after building it), or set ``withdrawn`` only when the delete went through."""
    from archive_pipeline.core import archive as archive_module
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.store import UploadError
    from archive_pipeline_tests.test_integrity import stored_keys

    spec, first = _late_overwrite_setup(conn, schema, store)
    manifest_key = next(k for k in stored_keys(s3_client, bucket) if k.endswith(".manifest.json"))
    before = stored_keys(s3_client, bucket)
    real_refuse = archive_module._Archiving._refuse_replaced

    def removal_marks_it(self, result, existing):  # the primary's removal writes its pending mark meanwhile
        marked = {k: v for k, v in decode_manifest(existing.raw).items() if k != "manifest_sha256"}
        marked["removed"] = {"at": "2024-04-01T00:00:00+00:00", "action": "delete", "state": "pending",
                             "by": "another server", "relation": f"{schema}.ev", "xid": "1"}
        s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(marked))
        return real_refuse(self, result, existing)

    real_delete = store.delete
    failed = []

    def delete(key, *args, **kwargs):
        if ".g2" in key and not failed:  # one DELETE fails (the client's retries spent); a second would work
            failed.append(key)
            raise UploadError(f"deleting {key} failed: 503 SlowDown (after 5 attempts)", retryable=True)
        return real_delete(key, *args, **kwargs)

    monkeypatch.setattr(archive_module._Archiving, "_refuse_replaced", removal_marks_it)
    monkeypatch.setattr(store, "delete", delete)
    with pytest.raises(ArchiveError) as raised:
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    error = raised.value
    assert "changed while this run archived" in str(error) and failed, error  # (the premise)
    left = [k for k in stored_keys(s3_client, bucket) if k not in before]
    notes = " ".join(getattr(error, "__notes__", []))
    assert not left or all(k.rsplit("/", 1)[-1] in notes for k in left), (
        f"{left} left in the bucket, named by no manifest, and the error says nothing of it: {error}; notes: {notes!r}")


def test_an_overwrite_whose_manifest_read_fails_before_its_commit_deletes_the_object_another_run_committed(
        conn, schema, store, s3_client, bucket, monkeypatch):
    """The case _withdraw_unnamed's docstring names: another run of the day (a run on another server, or one that
    took the day after this one lost its lock) archived the same rows as the same generation g2 at the same key,
    found ours there as its own (or we found its), and committed its manifest naming g2. This run's _commit ->
    _refuse_replaced reads the manifest again before its PUT, and that GET fails (a 503 outlasting the retries).
    Now: _refuse_replaced deletes g2 anyway ("ours alone: no manifest names the new generation yet") and marks the
    error ``withdrawn``, so _withdraw_unnamed (which leaves an object it cannot tell is unnamed) is never asked:
    the day's committed manifest names an object that is gone -- a green archive with no data, the rows' only copy
    once the day is removed. _commit's own docstring: "Nothing is ever deleted on the strength of a manifest that
    could not be read". Expected: g2 stays (the manifest in the store names it); the error may say it was left.
    Fix idea: on a failed read, leave the withdrawal to _withdraw_unnamed (it notes the object as left), or first
    ask the manifest's HEAD whether its ETag is still the one this run decided on (then g2 is ours alone)."""
    from archive_pipeline.core import archive as archive_module
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import build_manifest, encode_manifest
    from archive_pipeline.core.store import DownloadError

    spec, first = _late_overwrite_setup(conn, schema, store)
    manifest_key = next(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
                        if o["Key"].endswith(".manifest.json"))
    real_commit = archive_module._Archiving._commit
    committed = {}

    def other_run_commits_first(self, result, identity, definition, existing):
        # the other run's commit: the same rows, the same generation, the same object key (its manifest as ours)
        superseded, kept = self._retire(result, existing)
        theirs = build_manifest(result, identity, definition)
        theirs.update(superseded=superseded, kept=kept)
        s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(theirs))
        committed["key"] = result.key
        return real_commit(self, result, identity, definition, existing)

    real_get = archive_module._get_manifest_bytes

    def failing(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_refuse_replaced":
            raise DownloadError("GetObject failed: 503 SlowDown (after 5 attempts)", retryable=True)
        return real_get(*args, **kwargs)

    monkeypatch.setattr(archive_module._Archiving, "_commit", other_run_commits_first)
    monkeypatch.setattr(archive_module, "_get_manifest_bytes", failing)
    with pytest.raises(ArchiveError) as raised:
        archive_partition(conn, spec, DAYS[0], store, overwrite=True)
    error = raised.value
    assert "nothing was replaced" in str(error) and committed, error  # (the premise)
    names = store.get_bytes_or_none(manifest_key)
    assert committed["key"].encode() in names  # (the store's manifest names g2)
    assert store.head(committed["key"]) is not None, (
        f"the day's committed manifest names {committed['key']}, which this run deleted on the strength of a "
        f"manifest it could not read: {error}; notes: {getattr(error, '__notes__', [])}")


def _two_naming_tables(conn, schema: str) -> list[dict]:
    """Two naming-mode tables ev and fv (a day table each per day of DAYS, 40 rows, no day column)."""
    tables = []
    for prefix in ("ev", "fv"):
        for n, day in enumerate(DAYS):
            day_table = sql.Identifier(schema, f"{prefix}_{day:%Y%m%d}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(day_table))
            conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, md5(g::text) FROM generate_series(1, 40) g")
                         .format(day_table), (n,))
        tables.append({"name": f"{schema}.{prefix}", "start_date": DAYS[0].isoformat(),
                       "partitioning": {"mode": "naming", "pattern": f"{prefix}_%Y%m%d"}})
    return tables


def test_a_range_restore_of_two_tables_cancelled_while_finishing_the_first_tables_last_day_names_no_command(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Two naming-mode tables ev and fv archived for D1..D3, their day tables dropped. `restore --from D1 --to D3
    --into original` (both tables) gets Ctrl-C right after ev's D3 committed, before its result came back
    ("finishing", the last day of its table). Now the message ends "to fix: <schema>.ev is done, then the other
    tables (<schema>.fv)": no command at all for fv's three days (README: "Cancelled after some days were
    committed, it lists them too and names the command that restores the rest"); the user must work out
    `restore --table <schema>.fv --from D1 --to D3 --into original` alone (`--table fv` without a range is a
    usage error). Expected: the remedy names a command restoring fv's days, which, run, restores them.
    Fix idea: in _the_rest, when tables are left, name `restore --table <each left> --from <range's first>
    --to <range's last> --into ...` (as the text does for the stopped table's own rest)."""
    import re
    import shlex

    from archive_pipeline_tests.test_hunt3_o import _archived, cli, make_env, write_config
    from archive_pipeline_tests.test_hunt15_uc import signalling_cli

    tables = _two_naming_tables(conn, schema)
    _archived(conn, tables, s3_client, bucket)
    for prefix in ("ev", "fv"):
        for day in DAYS:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"{prefix}_{day:%Y%m%d}")))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables), tmp)
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "original"]
    done = signalling_cli(env, ["archive_pipeline.core.restore", "RestoreResult", 3, "SIGINT"], *args)
    assert done.returncode == 130 and "after 3 day(s) were committed" in done.stderr, done.stdout + done.stderr
    told = re.search(r"run (archive-pipeline restore [^()]*?--table \S*fv\b.*?)(?= to restore|, then|$)",
                     done.stderr, re.M)
    assert told, f"the remedy names no command that restores {schema}.fv: {done.stderr.strip()}"
    again = cli(env, *shlex.split(told.group(1))[1:])
    assert again.returncode == 0, again.stdout + again.stderr
    for day in DAYS:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, f"fv_{day:%Y%m%d}"))).fetchone()[0] == 40


def test_a_range_restore_cancelled_while_finishing_says_the_same_command_finds_the_day_restored_where_it_loads_it_twice(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """Naming-mode table (no day column), the user's empty table T: `restore --from D1 --to D3 --into existing
    --target T` gets Ctrl-C right after D2 committed ("finishing"). The message, since 3a5cf88 reached for a
    range, says "...; the day's restore had committed: the day is restored (the same command finds it restored);
    to fix: run ... --from D3 ...". The parenthesis is CANCELLED_LEAVES["finishing"], written for one day's restore;
    here it is false: the same command run again (as a user takes "finds it restored" to allow) loads D1 and D2 a
    second time into T and exits 0 (a target without a day column cannot tell, test_hunt15_uc's strict xfail), T
    then holding 200 rows, 120 distinct. Expected: the message claims nothing the same command does not do (say
    the day is restored, and the remedy only), or the same command run again leaves each row once.
    Fix idea: in cli._restore_cancelled, say "the day's restore had committed: the day is restored" without the
    parenthesis where the remedy is another command."""
    from archive_pipeline_tests.test_hunt3_o import _archived, cli, make_env, write_config
    from archive_pipeline_tests.test_hunt15_uc import _naming_days, signalling_cli

    table = _naming_days(conn, schema)
    _archived(conn, [table], s3_client, bucket)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)
    back = sql.Identifier(schema, "back")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(back))
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "existing",
            "--target", f"{schema}.back"]
    done = signalling_cli(env, ["archive_pipeline.core.restore", "RestoreResult", 2, "SIGINT"], *args)
    assert done.returncode == 130 and "after 2 day(s) were committed" in done.stderr, done.stdout + done.stderr
    if "the same command finds it restored" not in done.stderr:
        return
    again = cli(env, *args)  # as the message says: the same command finds the committed days restored
    restored = conn.execute(sql.SQL("SELECT id, note FROM {} ORDER BY id, note").format(back)).fetchall()
    assert again.returncode == 0 and len(restored) == 120 == len(set(restored)), (
        f"told {done.stderr.strip()!r}; the same command then exited {again.returncode} and left {len(restored)} rows "
        f"({len(set(restored))} distinct) in the target")


def test_an_inline_asset_key_prefix_holding_a_jinja_comment_is_silently_another_prefix():
    """A component's defs.yaml sets ``asset_key_prefix: "team{#eu#}"`` (a typo'd or pasted value). The README:
    "Inline, a string holding Dagster's template syntax ... is rendered by Dagster's templates; every other string
    is taken as written, as the file takes it (a name holding `{#` ...)". 95970ac/3a5cf88 apply that to ``tables``
    only (_rendered); the other inline attributes still go through Dagster's own resolution, which renders every
    string: Jinja drops ``{#eu#}`` as a comment, and the code location loads with the prefix ``team`` -- silently
    other asset keys than written (the table file refuses "team{#eu#}": '{' and '#' cannot be part of an asset
    key). Expected: refused, naming the value as written (as the file does), or taken as written.
    Fix idea: give asset_key_prefix (and source/retry/schedule/sensor/backfill) a Resolver that goes through
    _rendered, as tables does."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    yaml = ("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
            "asset_key_prefix: \"team{#eu#}\"\n")
    try:
        prefix = ArchiveTablesComponent.resolve_from_yaml(yaml).archive_config().asset_key_prefix
    except Exception as exc:  # noqa: BLE001 - refused: it must name the value as written
        assert "team{#eu#}" in str(exc), f"{type(exc).__name__}: {exc}"
    else:
        assert tuple(prefix) == ("team{#eu#}",), f"asset_key_prefix 'team{{#eu#}}' loaded as {prefix!r}"
