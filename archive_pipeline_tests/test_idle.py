"""No session of ours sits idle in a transaction while the store is slow (faults issue, §2).

The store holds the first part until the test lets it go. Meanwhile the rows must all be read and
the read transaction ended: the temp file is the buffer, the upload lags behind the read and never
the other way round. A 1 s idle_in_transaction_session_timeout would kill any session that waits
inside its transaction, so the archive succeeding after the hold is the proof; pg_stat_activity
shows the state directly.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

D = dt.date(2024, 3, 10)


@pytest.fixture
def big(conn, schema) -> str:
    table = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    # hex of several md5s: compresses about 2:1 whatever the codec, so every format needs several parts
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', md5(g::text) || md5((g * 7)::text) || "
                         "md5((g * 13)::text) || md5((g * 17)::text) FROM generate_series(1, 100000) g").format(table))
    return f"{schema}.big"


def session_states(conn, application_name: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT state, backend_type FROM pg_stat_activity WHERE application_name = %s",
                        (application_name,)).fetchall()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_the_read_transaction_ends_while_the_store_still_holds_a_part(pg, s3, conn, bucket, big, fmt):
    spec = TableSpec(name=big, day_column="at", start_date="2024-03-01", format=fmt, compression="none")
    name = f"archive-idle-{fmt}"
    with FaultProxy(s3.endpoint_url) as proxy:
        held = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=1, hold_timeout=60))
        store = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        outcome: dict = {}
        archiving = pg.connect(application_name=name)

        def run() -> None:
            try:
                outcome["result"] = archive_partition(
                    archiving, spec, D, store, session_settings={"idle_in_transaction_session_timeout": "1000"})
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            deadline = time.monotonic() + 60
            while session_states(conn, name) != [("idle", "client backend")] and time.monotonic() < deadline:
                time.sleep(0.05)
            # every row is read and the transaction is over while the first part is still held
            assert session_states(conn, name) == [("idle", "client backend")]
            assert thread.is_alive() and proxy.held() == 1
            time.sleep(1.5)  # past the idle timeout: a session idle in a transaction would be killed now
        finally:
            held.gate.set()
            thread.join(120)
    archiving.close()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.rows == 100000 and result.parts >= 2
