"""Hunt 10 (self): what I found while fixing the hunters' finds."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt10_pe import DAYS, cli, make_env, small_table, write_config


def test_compare_rows_whose_second_manifest_read_fails_names_the_day_not_a_bug(pg, s3, bucket, conn, schema, store,
                                                                              tmp_path):
    """A day changed since it was archived; the user runs `archive-pipeline compare --rows --day D` while the store
    starts answering 503 after the first manifest read. compare --rows reads the day's manifest again for the proof
    of its rows: that read failed outside the day's own error handling (a None's `.manifest`: "an unexpected
    error ... a bug in archive_pipeline"). Should: the day's rows are "not checked" with the store's cause, the
    command's answer valid JSON with the day in it."""
    small_table(conn, schema, days=DAYS[:1])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    archive_partition(conn, parse_config({"tables": [table]}).tables[0], DAYS[0], store)
    conn.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = 1").format(sql.Identifier(schema, "ev")))
    config = write_config(tmp_path, [table])
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="error", status=503, code="SlowDown",
                        skip=1, times=None))
        done = cli(make_env(pg, proxy.url, bucket), "compare", "--rows", "--config", str(config), "--day",
                   DAYS[0].isoformat(), "--json")
    assert "bug in archive_pipeline" not in done.stdout + done.stderr, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert DAYS[0].isoformat() in json.dumps(answer), answer
