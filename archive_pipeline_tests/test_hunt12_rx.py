"""Hunt 12 (rx): retention over a long history of mixed states: one table whose due days are in every state at
once (archived, never archived, archived empty, removed, pending marks committed or not, damaged or missing
objects, unreadable manifests, a former format, rows back after removal, changed days), run through `prune
--dry-run`, `prune`, `list --check-source`, `verify`, `compare` and the Dagster retention schedule."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.store import S3Store
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_cli import cli, cli_json, edit_config
from archive_pipeline_tests.test_hunt11_qj import PREFIX

ROWS = 5
KEEP = 5


@pytest.fixture
def days() -> list[dt.date]:
    today = utc_today()
    return [today - dt.timedelta(days=n) for n in range(20, 0, -1)]  # days[0..13] due with keep_days 5


@pytest.fixture
def mixed(pg, conn, schema, s3, bucket, s3_client, tmp_path, days, monkeypatch):
    import os
    import yaml

    from archive_pipeline_tests.test_cli import ROOT
    create_sample_events(conn, days, ROWS, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd",
             "retention": {"keep_days": KEEP, "action": "drop"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="250")
    store = S3Store(s3_client, bucket, prefix=PREFIX)

    def spec_now():
        from pathlib import Path
        return parse_config(yaml.safe_load(Path(config).read_text()), "t").tables[0]
    return env, f"{schema}.events", store, spec_now


def _child(schema, day):
    return sql.Identifier(schema, f"events_{day:%Y%m%d}")


def spec_jsonl(spec_now):
    return spec_now().model_copy(update={"format": "jsonl"})


def _boom(*a, **k):
    raise RuntimeError("injected")


import contextlib


@contextlib.contextmanager
def pg_primary(conn):
    import psycopg
    with psycopg.connect(conn.info.dsn, autocommit=True) as c:
        yield c


def _recreate(conn, schema, day):
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {c} PARTITION OF {t} FOR VALUES FROM ({lo}) TO ({hi})").format(
        c=_child(schema, day), t=sql.Identifier(schema, "events"),
        lo=sql.Literal(dt.datetime.combine(day, dt.time(), dt.UTC)),
        hi=sql.Literal(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC))))


def _late_row(conn, schema, day, id_=999):
    conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type, amount) VALUES ({}, {}, 1, 'late', 1)")
                 .format(sql.Identifier(schema, "events"), sql.Literal(id_),
                         sql.Literal(dt.datetime.combine(day, dt.time(3), dt.UTC))))


def _statuses(out):
    return {r["day"]: (r["status"], (r.get("message") or "")[:160]) for r in out["days"]}


def _pending_committed(conn, spec, store, monkeypatch, *days_):
    """Each day removed by a removal whose COMMIT happened and whose 'done' mark was never written (the process
    killed after the COMMIT: here the step right after it fails): its manifest stays 'pending'."""
    from archive_pipeline.core import lifecycle as L
    with pg_primary(conn) as c, monkeypatch.context() as m:
        m.setattr(L, "_tidy_removed", _boom)
        for day in days_:
            with pytest.raises(Exception, match="committed"):
                L.remove_day(c, spec, day, store)


def test_prune_dry_run_calls_a_committed_pending_day_whose_rows_are_back_already_removed(
        mixed, conn, schema, days, monkeypatch):
    """Two due days whose removal committed but whose 'done' mark was never written (a prune killed after its
    COMMIT: manifest left 'pending'); then the day's rows are back in the source: on the first, a late row arrived
    (its partition created again); the second was restored with `restore --into original`. Now `prune --dry-run`
    lists both `already removed` (rows 5, exit 0), while the real `prune` right after refuses the first (its rows
    are not the archive's, exit 1) and removes the second's 5 restored rows again (`removed`). The dry run does
    not predict the real run (README: `--dry-run` proves and lists them; a day back in the source is "an
    ordinary source day again: the next removal proves and removes it again instead of calling it 'already
    removed'"), and says a day is removed while the source holds its rows.
    Should: the dry run lists each as the real run does: the late-row day refused (changed since archived), the
    restored day `would remove`; the exit codes agree.
    Fix idea: in _remove_day's dry-run branch for a committed pending mark, return already_removed only when
    _nothing_back(...) holds; otherwise go on to the proof, as the real run does after settling."""
    env, name, store, spec_now = mixed
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    _pending_committed(conn, spec_now(), store, monkeypatch, days[0], days[1])
    _recreate(conn, schema, days[0])
    _late_row(conn, schema, days[0])
    restored = cli(env, "restore", "--day", days[1].isoformat(), "--into", "original")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    rng = ("--from", days[0].isoformat(), "--to", days[1].isoformat(), "--json")
    dry = cli(env, "prune", "--dry-run", *rng)
    real = cli(env, "prune", *rng)
    planned = {r["day"]: r["status"] for r in json.loads(dry.stdout)["days"]}
    done = {r["day"]: r["status"] for r in json.loads(real.stdout)["days"]}
    assert done == {days[0].isoformat(): "refused", days[1].isoformat(): "removed"}, real.stdout  # the setup
    assert planned == {days[0].isoformat(): "refused", days[1].isoformat(): "would remove"}, dry.stdout
    assert dry.returncode == real.returncode == 1


def test_prune_refusing_a_day_changed_since_archived_says_what_to_do(mixed, conn, schema, days):
    """A due, archived day whose rows were updated after archiving (and a removed day a late row came back to: the
    same refusal). Now `prune` refuses it (right) with only: "<table> <day> stays in the source: its archive is not
    proven: the source's rows for <day> are not the archive's: the same 5 rows in number but other content
    (fingerprint …); first difference: …" — no remedy at all, and it blames the archive ("not proven") for what
    is the source's change (`verify` calls the same archive ok). Every other refusal of the run names what to do
    (archive it first; restore it from a replica or archive the day again); the `source_removed` asset's failure
    for the same day adds "If the source's rows are the right ones (rows changed or arrived late), archive the
    day again, then remove it", and `archive --dry-run` says "add --overwrite". The most common refusal of a long
    history (a day edited after archiving) leaves the command-line user without the step that unblocks it.
    Should: the refusal names the cause as the source's change and the remedy: archive the day again with
    --overwrite, then prune. Fix idea: in _remove_day, when source_side_only(problems), raise RemovalRefused with
    remedy="archive the day again with overwrite (…), then remove it" (the CLI words it as --overwrite)."""
    env, name, store, spec_now = mixed
    cli_json(env, "archive", "--day", days[0].isoformat())
    conn.execute(sql.SQL("UPDATE {} SET amount = 42 WHERE created_at >= {} AND created_at < {}").format(
        sql.Identifier(schema, "events"), sql.Literal(dt.datetime.combine(days[0], dt.time(), dt.UTC)),
        sql.Literal(dt.datetime.combine(days[1], dt.time(), dt.UTC))))
    out = cli_json(env, "prune", "--day", days[0].isoformat(), code=1)
    [day] = out["days"]
    assert day["status"] == "refused", day
    assert "--overwrite" in day["message"], day["message"]


def test_prune_dry_run_calls_a_committed_pending_day_whose_only_copy_is_damaged_already_removed(
        mixed, conn, days, bucket, s3_client, monkeypatch):
    """A due day whose removal committed but whose 'done' mark was never written (a prune killed after its COMMIT:
    manifest 'pending', rows gone); since then its archive object, now the only copy, was damaged (bytes changed
    in the store). Now `prune --dry-run` lists it `already removed` (exit 0, nothing said), while the real `prune`
    right after fails it ("was removed from the source ..., but its archive no longer checks out: ... damaged ...;
    stays marked 'pending'; to fix: restore the archive's object ...", exit 1): the dry run neither predicts the
    real run nor warns that the only copy of removed rows is damaged (README: the settling completes a committed
    removal "once the archive still checks out ...; a damaged one keeps the mark pending and says so").
    Should: the dry run reports the day as the real run will (failed/refused, naming the damaged object), exit 1.
    Fix idea: in _remove_day's dry-run branch for a committed pending mark, run the settlement's archive check
    (verify_archive deep) and report its problems instead of returning already_removed unconditionally."""
    env, name, store, spec_now = mixed
    cli_json(env, "archive", "--day", days[0].isoformat())
    spec = spec_now()
    _pending_committed(conn, spec, store, monkeypatch, days[0])
    key = keys.table_day_key(spec, days[0], PREFIX)
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=key, Body=body[:-3] + b"xyz")
    dry = cli(env, "prune", "--dry-run", "--day", days[0].isoformat(), "--json")
    real = cli(env, "prune", "--day", days[0].isoformat(), "--json")
    [done] = json.loads(real.stdout)["days"]
    assert done["status"] == "failed" and "damaged" in done["message"], done  # the setup
    [planned] = json.loads(dry.stdout)["days"]
    assert planned["status"] in ("failed", "refused") and "damaged" in planned.get("message", ""), planned
    assert dry.returncode == real.returncode == 1


def _pending_not_committed(conn, spec, store, monkeypatch, day):
    """A removal of ``day`` that wrote its pending mark, then was refused/rolled back, and whose taking back of the
    mark was lost (the store failed that PUT): the manifest stays 'pending' while every row is in the source."""
    from archive_pipeline.core import lifecycle as L
    with pg_primary(conn) as c, monkeypatch.context() as m:
        m.setattr(L, "_recheck_and_remove", _boom)
        m.setattr(L, "_take_back", lambda *a, **k: None)
        with pytest.raises(RuntimeError):
            L.remove_day(c, spec, day, store)


def test_list_check_source_drops_the_pending_removal_note_that_plain_list_shows(mixed, conn, days, monkeypatch):
    """A due, archived day whose removal was refused after it wrote its pending mark, and the mark could not be
    taken back (README: "the pending mark stays while every row is still in the source"). Plain `list` says so:
    "drop begun at … not finished (marked pending): the source still shows the day; the next archive run or prune
    of the day settles it". `list --check-source`, the deeper look, lists the same day `archived` with an EMPTY
    note: the pending mark (which keeps the day from being archived over and that a prune must settle) vanishes
    from the report exactly when the user asked for the source to be checked; the same holds for a day whose
    committed removal's rows were restored into the table (plain list: "rows of the day are in the source again
    after its drop"; --check-source: nothing).
    Should: --check-source keeps what plain list says of a removed/pending day present in the source (and adds
    its fingerprint verdict). Fix idea: in plan.list_status's check_source branch, when archived.removed and the
    source matches, set note = _removed_yet_present(conn, spec, day, archived)."""
    env, name, store, spec_now = mixed
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    _pending_not_committed(conn, spec_now(), store, monkeypatch, days[0])
    [plain] = cli_json(env, "list", "--day", day)["days"]
    assert "pending" in json.dumps(plain), plain  # the setup: plain list says the mark is pending
    [checked] = cli_json(env, "list", "--check-source", "--day", day)["days"]
    assert "pending" in json.dumps(checked), checked


def test_prune_calls_a_day_already_removed_not_due_after_keep_days_was_raised(mixed, conn, days):
    """A long history: an old day was pruned (dropped, manifest 'removed: done') under keep_days 5; later the
    table's keep_days is raised to 30 (a new compliance rule), so that day is inside the window again. Now `prune
    --from … --to …` over the history lists it `not due`: "within the retention window (keep_days 30): nothing
    removed; due once that many days have passed after it" — the day is not in the source at all (`list` says
    "dropped from the source at …", `compare` "not-in-source"), and it will never be "due" for anything: the
    report tells the user the source still holds rows it removed long ago, and that they will go later.
    Should: a day of the selection already removed is reported as such (`already removed`, or `not due` saying it
    was dropped already, with its relation and
    archive, as prune reports a due removed day), whatever the window says now; `not due` only for days the source
    still holds. Fix idea: in prune, read the manifests of the not-due selected days not in the source (as for
    the due ones, _pending_removals' lookup) and list removed ones as `already removed`."""
    env, name, store, spec_now = mixed
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    [pruned] = cli_json(env, "prune", "--day", day)["days"]
    assert pruned["status"] == "removed", pruned  # the setup
    edit_config(env, {"retention": {"keep_days": 30, "action": "drop"}})
    [listed] = cli_json(env, "list", "--day", day)["days"]
    assert "dropped from the source" in listed["note"], listed  # the setup: list knows it was removed
    [again] = cli_json(env, "prune", "--day", day)["days"]
    # (README lists a day inside the window `not due`; the status may stay, but not the false promise of a removal
    # to come for a day that is gone: it must say the day was removed already)
    said = again.get("message", "")
    assert again["status"] == "already removed" or ("due once" not in said and "dropped" in said), again


def test_prune_failing_a_removed_day_whose_manifest_is_unreadable_says_what_it_is_and_what_to_do(
        mixed, conn, days, bucket, s3_client):
    """A day pruned long ago (dropped; the archive is the only copy of its rows) whose manifest has since become
    unreadable (bytes damaged in the store). Every later `prune` over the history fails that day (exit 1, each run)
    with only: "manifest cli/…/<day>.jsonl.zst.manifest.json is unreadable: not valid JSON (…)" — it does not say
    the day is gone from the source (the damaged manifest is the only record of the only copy), nor what to do; a
    user following the advice prune gives for the same damage on a day still in the source ("archive the day again
    (--overwrite)") gets `no-data` and the same failure on the next prune, forever. The `source_removed` asset says
    of the like case: "was removed from the source …: what is stored of the day is its only copy. Restore the
    manifest from a backup of the bucket (its versions, a replica)".
    Should: the failure names the state (no longer in the source: the archive may be its only copy) and the remedy
    (restore the manifest from a backup / the bucket's versions), and is not retryable.
    Fix idea: in _prune_table, word an unread manifest of a day absent from the source like the asset's
    _removed_before message (or RemovalRefused with that remedy)."""
    env, name, store, spec_now = mixed
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    cli_json(env, "prune", "--day", day)
    key = keys.table_day_key(spec_now(), days[0], PREFIX)
    s3_client.put_object(Bucket=bucket, Key=keys.manifest_key(key), Body=b"{not json")
    [failed] = cli_json(env, "prune", "--day", day, code=1)["days"]
    assert failed["status"] in ("failed", "refused"), failed  # the setup
    message = failed["message"]
    assert "backup" in message or "versions" in message, message  # the remedy
    assert "source" in message, message  # the state: the day is no longer in the source
