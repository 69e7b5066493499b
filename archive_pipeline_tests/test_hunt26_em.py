"""Hunt 26 (em): outputs that must stay bounded and truthful when the difference is huge: a wide table's proof, a
long range's checks."""

from __future__ import annotations

import datetime as dt
import json

from dagster import AssetCheckKey, AssetSelection, DagsterEventType, instance_for_test, materialize

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)


def test_verify_deep_of_a_wide_jsonl_day_names_every_json_column_with_its_whole_note_in_one_problem(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a table ev (id, at date, j0 .. j199 json), a wide event table whose payload is spread over 200 json
    columns, archived as JSONL (the default format; each json column is recorded ``exact: false``, as the README's
    type table says). One row of 2024-03-10 holds a json value with a line break in j0 only (``{"a":\\n 1}``); every
    other value is plain. The user runs ``archive-pipeline verify --deep --day 2024-03-10 --json``.

    Now: the day fails, rightly ("the archive's rows are not the ones recorded ..."), but the problem then names
    every one of the 200 json columns with its whole encoding and note: ``verify._compare`` appends
    ``restore._inexact_explained(manifest)``, which joins ``'<name>': <encoding>, <note>`` for each inexact column,
    unbounded, the same 400-character note 200 times: one problem line of over 80 kB (about 0.65 MB for a table of
    1,600 json columns), in the text output, in --json, and in the Dagster check's description and a removal's
    refusal alike. The one column that changed (j0) is not told from the 199 that did not.

    Should: the problem stays a sentence a person reads: it names a few of the inexact columns and counts the rest
    ("'j0', 'j1', 'j2' and 197 more"), and says each distinct encoding note once. Fix idea: in
    ``restore._inexact_explained`` (and ``archive._refuse_inexact_archive``, which lists them the same way), group
    the inexact columns by (encoding, note) and name each group with ``source._listed`` / ``names_brief``."""
    width = 200
    columns = ", ".join(f"j{i} json" for i in range(width))
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, {columns})")
    values = ", ".join(["'{\"a\":\n 1}'"] + ["'{\"a\": 1}'"] * (width - 1))
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, {values})", (DAY,))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", str(DAY)).returncode == 0
    done = cli(env, "verify", "--deep", "--day", str(DAY), "--json")
    assert done.returncode == 1, (done.stdout, done.stderr)
    [day] = json.loads(done.stdout)["days"]
    assert not day["ok"] and day["problems"], day
    longest = max(day["problems"], key=len)
    assert "not the ones recorded" in " ".join(day["problems"]), day["problems"]
    notes = longest.count("line breaks between JSON tokens become spaces")
    assert notes <= 1 and len(longest) < 4000, (
        f"one problem of verify --deep is {len(longest):,} characters, the same encoding note repeated {notes} "
        f"times (once per json column of the table): {longest[:1200]}…")


def test_archive_intact_of_a_range_the_store_refuses_repeats_the_same_cause_once_per_day(
        conn, schema, archive_env, s3, monkeypatch):
    """Scenario: 20 days of ``<schema>.events`` (2024-03-10 .. 2024-03-29) are archived by a ranged run. The bucket
    policy then denies the code location's role (every HEAD answers 403 AccessDenied). The person executes
    ``archive_intact`` alone for the 20 days (the asset's Checks tab → Execute for a partition range), as for a year
    of days after a credentials rotation.

    Now: the step fails with "20 of 20 days could not be checked (...); the others were." followed by each day's
    whole failure, the same cause and the same "What to do: ..." advice once per day:
    ``checks._build_intact_check`` joins ``f.description`` of every unchecked day ("\\n\\n".join(...)), unbounded, so
    a range of three years is over a thousand copies of one sentence (hundreds of kB in the run's failure event),
    where the archive step's ranged failure (``assets._causes``) says a cause shared by many days once, naming the
    days ("N days failed alike (...), each as follows"), precisely because "thirty copies of one cause were a wall
    of text, not a cause". (``checks.cut_short`` joins its unchecked days' descriptions the same way.)

    Should: days that could not be checked alike are said once, with the days named (and counted); the failure's
    size does not grow with a copy of the cause per day. Fix idea: use ``assets._causes`` (keyed by day) for the
    unchecked days in ``_build_intact_check`` and ``cut_short``."""
    days = [DAY + dt.timedelta(days=i) for i in range(20)]
    ranged = {"dagster/asset_partition_range_start": days[0].isoformat(),
              "dagster/asset_partition_range_end": days[-1].isoformat()}
    create_sample_events(conn, days, rows_per_day=2, schema=schema)
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "backfill": {"max_days_per_run": 40},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat(), "format": "jsonl", "compression": "none"}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(instance=instance,
                                                                                  tags=ranged).success
        [archive] = defs.assets
        [intact] = [c for c in defs.asset_checks
                    if c.node_def.name == f"{asset_key(spec).to_python_identifier()}_archive_intact"]
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(method="HEAD", path=r"\.jsonl$", action="error", status=403, code="AccessDenied",
                            times=None))
            run = materialize([archive, intact], selection=AssetSelection.checks(intact), instance=instance,
                              tags=ranged, resources=build_definitions(config).resources, raise_on_error=False)
        assert not run.success
        [failure] = [e for e in instance.all_logs(run.run_id)
                     if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_FAILURE]
        data = failure.dagster_event.step_failure_data
        text = (data.user_failure_data.description if data.user_failure_data else None) or data.error.message
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=100)
    assert not [h for h in history if h.run_id == run.run_id and h.status.value == "SUCCEEDED"], history
    assert "20 of 20 days could not be checked" in text, text[:2000]
    advice = text.count("What to do:")
    assert advice <= 2, (
        f"the range check's failure is {len(text):,} characters: the same cause and advice said {advice} times, once "
        f"per day, where the archive step's ranged failure says a shared cause once:\n{text[:3000]}")


def test_each_day_s_materialization_of_a_wide_jsonl_table_records_the_same_note_once_per_json_column(
        conn, schema, archive_env):
    """Scenario: the table ev (id, at date, j0 .. j199 json) of the first test, archived as JSONL by its Dagster job,
    one run per day (the schedule's daily run; a backfill of three years is 1,095 of them). Nothing is wrong with the
    day: the archive is green.

    Now: every day's materialization records ``inexact_columns``: ``assets`` (the metadata built beside
    ``meta["exact"]``) stores ``{name: note}`` for every inexact column, the same 400-character note 200 times:
    about 75 kB of metadata per day's materialization (some 0.6 MB for 1,600 json columns), stored in the event log for
    every day archived and shown on the asset's page, for a fact that is one sentence and a list of names.

    Should: the materialization says which columns are inexact (a few named, the rest counted, or the names alone)
    and each distinct note once, so the metadata of a day stays a few kB whatever the table's width. Fix idea: record
    ``inexact_columns`` as the names (bounded, with a count) and the notes grouped by distinct note."""
    width = 200
    columns = ", ".join(f"j{i} json" for i in range(width))
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, {columns})")
    values = ", ".join(["'{\"a\": 1}'"] * width)
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, {values})", (DAY,))
    config = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
                                       "format": "jsonl", "compression": "none"}]})
    with instance_for_test() as instance:
        run = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            instance=instance, partition_key=DAY.isoformat())
        assert run.success
        [materialization] = [e.event_specific_data.materialization for e in run.all_events
                             if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    inexact = materialization.metadata["inexact_columns"].value
    stored = json.dumps(inexact)
    notes = stored.count("line breaks between JSON tokens become spaces")
    assert notes <= 1 and len(stored) < 4000, (
        f"one day's materialization records inexact_columns of {len(stored):,} characters, the same note {notes} "
        f"times: {stored[:800]}…")
