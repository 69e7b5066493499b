"""No session of ours sits idle in a transaction while the store is slow (faults issue, §2).

The store holds the first part until the test lets it go. Meanwhile the rows must all be read and
the read transaction ended: the temp file is the buffer, the upload lags behind the read and never
the other way round. A 3 s idle_in_transaction_session_timeout would kill any session that waits
inside its transaction, so the archive succeeding after the hold is the proof; pg_stat_activity
shows the state directly.
"""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.helpers import archive_while_the_store_holds_a_part

D = dt.date(2024, 3, 10)


@pytest.fixture
def big(conn, schema) -> str:
    table = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    # hex of several md5s: compresses about 2:1 whatever the codec, so every format needs several parts
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', md5(g::text) || md5((g * 7)::text) || "
                         "md5((g * 13)::text) || md5((g * 17)::text) FROM generate_series(1, 100000) g").format(table))
    return f"{schema}.big"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_the_read_transaction_ends_while_the_store_still_holds_a_part(pg, s3, conn, bucket, big, fmt):
    spec = TableSpec(name=big, day_column="at", start_date="2024-03-01", format=fmt, compression="none")
    result = archive_while_the_store_holds_a_part(pg, s3, conn, bucket, spec, D, f"archive-idle-{fmt}")
    assert result.rows == 100000 and result.parts >= 2
