"""Hunt 11 (qa): review of the hunt-10 fixes (leftovers, lost objects, standby settling, manifest shape, range
restores' suggestions): real PostgreSQL, the real S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_pw import week  # noqa: F401 - fixture: 7 days of 50 rows, CLI env


def test_a_range_restore_into_a_missing_target_does_not_tell_the_user_to_skip_its_first_day(
        week, conn):  # noqa: F811
    """`restore --from D0 --to D6 --into existing --target s.nope --json`, where s.nope does not exist (a typo,
    or the table not created yet). The first day fails, not retryable: "... s.nope does not exist ...; to fix:
    create it or restore into a new table". Since the hunt-10 fix for ranges stopped by a damaged day, every
    non-retryable failure of a day is taken for that day's own, and the message goes on: "then: run
    archive-pipeline restore --table T --from D1 --to D6 --into existing --target s.nope to restore the rest of
    T (D1, ..., without D0)". Nothing about D0 failed: the target is missing for every day. A user who creates
    the table and runs the suggested command never restores D0 (and the suggested command alone fails the same
    way until then). Expected: a failure that is not the day's (the target's, a configuration cause) names no
    command that leaves the day out; the same command, once the target exists, restores the whole range.
    Fix idea: append _the_rest only for a failure of the day's own archive (not CONFIGURATION_CAUSES / target)."""
    env, spec, days = week
    done = cli(env, "archive", "--from", days[0].isoformat(), "--to", days[6].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    target = f"{spec.schema_name}.nope"
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[6].isoformat(), "--into", "existing",
               "--target", target, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode != 0 and answer["days"] == [], done.stdout + done.stderr
    # Now: "...; then: run archive-pipeline restore --table ... --from D1 --to D6 --into existing --target
    # s.nope to restore the rest of ... (D1, ..., without D0)"
    assert f"without {days[0].isoformat()}" not in answer["error"], answer["error"]
    assert f"--from {days[1].isoformat()}" not in answer["error"], answer["error"]
