"""Hunt 18 (xc): the S3 request fails or its response is corrupted during the read-side and tidying commands
(list, verify, compare, restore, prune, the Dagster asset checks, the sensor's listing), injected through the fault
proxy between the client and moto. Each test asserts what the README promises and fails on the current code because
of a product bug."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt16_vm import _config, _recorded, _sensor_run_failed, _tick

YESTERDAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()


def _days_table(conn, schema: str, days: list[dt.date], name: str = "t") -> None:
    conn.execute(f'CREATE TABLE "{schema}".{name} (id int, at timestamptz)')
    for i, day in enumerate(days):
        conn.execute(f'INSERT INTO "{schema}".{name} VALUES (%s, %s), (%s, %s)',
                     (2 * i, dt.datetime.combine(day, dt.time(5), dt.UTC),
                      2 * i + 1, dt.datetime.combine(day, dt.time(12), dt.UTC)))


def test_the_sensor_never_records_a_day_again_after_one_tick_saw_its_object_404_on_head(
        pg, conn, schema, archive_env, store, temp_dir, s3, monkeypatch):
    """Scenario: the sensor's runs of four days failed (a store outage, say); the operator archives the first of them
    with the command line (the tick's remedy; here the same core call), intact, and will see to the others. On the
    next tick the store answers the two HEADs of one
    day's object 404 (a store or gateway lagging a moment: the tick's own bucket listing shows that very object with
    its size and ETag). The tick after that the store answers normally, and nothing in the bucket changed.

    Now: defs/outside.py ``_record`` takes the two 404s (``object_problems``) for "object not as recorded" and
    returns None; archived_outside
    then puts the day's mark (a digest of what the listing shows under the day's prefix) into ``rejected``, which
    the sensor keeps between ticks; every later tick skips a day whose mark is in it ("not read again while the
    listing shows it unchanged"). The listing never changes (nothing is wrong with the archive), so the day is never
    recorded while the code server runs: it stays listed as a failed run whose remedy (archive it with the command
    line) was followed, and running that remedy again skips the identical archive, changing nothing. A passing
    fault became a lasting verdict.

    Should: only a proven rejection is remembered (a manifest that is not this table-day's, another period's or
    database's, removed, written before the failed run); an object the store says is missing while the tick's own
    listing shows it (or any store answer that may be passing) is no verdict: the day is read again next tick.
    Fix idea: in archived_outside, add a day's mark to ``rejected`` only for rejections decided by the manifest
    itself, not by object_problems; or check the HEAD's 404 against the listed ETag of the object."""
    days = [YESTERDAY - dt.timedelta(days=n) for n in (3, 2, 1, 0)]
    _days_table(conn, schema, days)
    config = _config(schema, start_date=(days[0] - dt.timedelta(days=1)).isoformat())
    spec = config.tables[0]
    victim = days[0]
    archive_partition(conn, spec, victim, store, temp_dir=temp_dir)
    object_key = table_day_key(spec, spec.period(victim), "archive")
    defs = build_definitions(config)
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        for day in days:
            _sensor_run_failed(instance, spec, day.isoformat())
        fault = proxy.add(Fault(method="HEAD", path=rf"/{object_key}$", action="error", status=404, code="NoSuchKey",
                                times=2))
        first = _tick(defs, instance, pg)
        assert fault.hits == 2, "the fault was meant for this tick's reading of the day"
        assert any(r.method == "GET" and "list-type" in r.query for r in proxy.records), "the tick listed the bucket"
        for event in first.asset_events or []:  # what the daemon does with a tick's records
            instance.report_runless_asset_event(event)
        recorded = set(_recorded(first))
        assert recorded == set(), recorded
        second = _tick(defs, instance, pg)  # the store answers normally now; nothing in the bucket changed
        recorded |= set(_recorded(second))
    assert victim.isoformat() in recorded, (
        f"{victim} is never recorded again after one tick's passing 404: "
        f"{second.skip_message if hasattr(second, 'skip_message') else second}")


# --- the command line over a bucket listing altered on the way ------------------------------------------------------

from archive_pipeline.core.store import S3Store  # noqa: E402
from archive_pipeline_tests.test_cli import PREFIX, cli, cli_json, days, edit_config, setup  # noqa: E402,F401 - fixtures
from archive_pipeline_tests.test_readpath_faults_hunt import HeaderProxy, _json_answer  # noqa: E402


@pytest.mark.parametrize("command", ["verify", "list"])
def test_a_one_bit_flip_in_the_listing_hides_a_day_archived_empty(setup, conn, s3, s3_client, bucket, days, temp_dir,
                                                                   command):
    """Scenario: a range of more than three days, one of them (the middle sample day) archived as empty (its rows
    deleted, then the day archived by a Dagster run: a manifest and no object). ``verify`` / ``list`` of the range find the manifests
    with one bucket listing (ListObjectsV2 has no checksum); on the way one bit of that day's manifest key flips
    ('.' after the date becomes '/': ``<day>/jsonl.zst.manifest.json``), keys still in order, KeyCount right.

    Now: core/listing.py ``listed_absent`` takes a manifest the listing does not show for absent "only when nothing
    else of the day is listed either" (the fix for a damaged manifest key of a day with an object). A day archived
    empty has nothing else: its manifest is its only key, so the day is decided "absent" from the altered listing
    alone and never read: ``verify`` silently leaves it out (exit 0, one day fewer checked, as if never archived)
    and ``list`` leaves it out (an archived-empty day shown as nothing at all).

    Should: a listing is no proof of absence for a day whose manifest it does not show when the listing holds a key
    that is no key of ours (``…/<day>/jsonl.zst.manifest.json`` is not one this table renders), or simply: a day the
    listing calls absent but whose own key is what was asked for is read (one GET) when the listing holds unknown
    keys under the range's prefix; the day is listed archived-empty / verified ok."""
    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    conn.execute(f'DELETE FROM "{spec.schema_name}".events WHERE created_at >= %s AND created_at < %s',
                 (days[1], days[1] + dt.timedelta(days=1)))
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    empty = archive_partition(conn, spec, days[1], S3Store(s3_client, bucket, prefix=PREFIX), temp_dir=temp_dir)
    assert empty.empty and empty.rows == 0
    before = cli_json(env, command)
    assert days[1].isoformat() in {d["day"] for d in before["days"]}, before  # listed when the listing is intact
    name = f"{days[1]}.jsonl.zst.manifest.json".encode()
    with HeaderProxy(s3.endpoint_url) as proxy:
        altered = proxy.add_header_fault("GET", r"^/[^/]+/?$", ("replace_body", name, name.replace(b".", b"/", 1)),
                                         times=10)
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, command, "--json")
        assert altered["hits"] >= 1
    answer = _json_answer(done)
    listed = {d["day"] for d in answer.get("days", [])}
    assert days[1].isoformat() in listed, (done.returncode, answer)


def test_verify_calls_an_object_missing_on_two_404_heads_while_its_own_listing_shows_it(setup, s3, days):
    """Scenario: ``verify`` (light: HEAD only) of a range of six days, three archived. The command finds the
    manifests with one bucket listing, which shows each day's object with its size and ETag. Then the store
    answers the two HEADs of the first day's object 404 (a replica or a caching gateway lagging for a moment; the
    next request finds it), and answers normally afterwards.

    Now: core/verify.py ``object_problems`` asks the HEAD twice back to back and believes two 404s: the day is
    FAILED with "object s3://…/<day>.jsonl.zst is missing" and a remedy to archive the day again or restore the
    object from a backup of the bucket (exit 1), while the same command's listing a moment before showed that very
    object, size and ETag as the manifest records. (``S3Store._confirm_missing`` pauses between its two HEADs, its
    docstring saying "asked twice (a moment apart), as the light check asks it"; the light check does not pause,
    and nothing weighs the listing.) A fault is reported as a finding about the
    archive.

    Should: a 404 for an object the run's own listing shows is a contradiction of the store, not a proof: the day
    is "not checked (retryable)", or asked again a moment later (as _confirm_missing does) before "missing" is
    believed; the archive is ok once the store answers. Fix idea: pass the range's listing (listing.day_listings)
    to verify_archive and treat a listed object's 404 as retryable; or sleep _MISSING_AGAIN_SECONDS between the
    two HEADs of object_problems."""
    env, spec = setup
    edit_config(env, {"start_date": (days[0] - dt.timedelta(days=3)).isoformat()})
    cli_json(env, "archive", "--from", days[0].isoformat(), "--to", days[2].isoformat())
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="HEAD", path=rf"/{days[0]}\.jsonl\.zst$", action="error", status=404,
                                code="NoSuchKey", times=2))
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": proxy.url}, "verify", "--json")
        assert fault.hits == 2
        assert any(r.method == "GET" and "list-type" in r.query for r in proxy.records), "the range was listed"
    answer = _json_answer(done)
    first = {d["day"]: d for d in answer["days"]}[days[0].isoformat()]
    said = " ".join(first.get("problems", []))
    assert first["ok"] or ("missing" not in said and "not checked" in said), (said, first.get("remedy"))
