"""Hunt 18 (xi): resources and limits (S3's part limit, temp space, memory, connection and session limits)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import S3Store

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, name: str = "ev", **extra):
    table = {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv",
             "compression": "none", **extra}
    return parse_config({"tables": [table]}).tables[0]


class _FourPartStore(S3Store):
    """S3's 10,000-part limit scaled down to 4 parts (``max_parts`` is the class attribute meant for that): a day
    of 30 MB is then to this store what a day of 600 GB is to S3 at the default 8 MiB ``part_size``."""

    max_parts = 4


def test_equal_parts_are_not_raised_from_the_days_estimate_so_a_big_day_fails_after_uploading_its_capacity(
        conn, schema, s3_client, bucket, temp_dir):
    """Scenario: a store that takes only equal parts (Cloudflare R2: ``equal_parts: true``), whose part limit is
    scaled down to 4 parts of 5 MiB (20 MiB capacity at the configured part size: S3's 10,000 parts of 8 MiB,
    80 GB, scaled). The day holds ~31 MB of CSV (30,000 rows of 1 KB), the table analyzed, so the planner knows
    the day's size (EXPLAIN: 30,000 rows of ~1 KB).

    Now: ``archive.Archiver`` calls ``store.begin(data_key, ...)`` without ``expected_size``, so
    ``plan_parts`` keeps the configured part size (5 MiB) and the plan's capacity is 4 x 5 MiB: the run streams
    and uploads the first 20 MiB, then fails "the stream passed 20,971,520 bytes, all that 4 equal parts of
    5,242,880 bytes can hold (estimate: none)". The README promises the one size is "raised from the day's
    estimate" (``plan_parts`` raises it to 4 x estimate / max_parts), and the archiver never gives one: at real
    scale an R2 day over 80 GB always uploads 80 GB and then fails, every retry alike.

    Should: the archiver passes the day's estimated size (the planner's rows x width, or the dry run's
    ``est. bytes``, which it already computes from the catalog) as ``expected_size``, so the part size is raised
    up front and the day archives in equal parts; or, where no estimate fits, the run is refused before
    uploading, naming part_size_mb."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date, note text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, md5(g::text) || repeat('x', 1000) "
                 "FROM generate_series(1, 30000) g", (DAY,))
    conn.execute(f"ANALYZE {schema}.ev")
    store = _FourPartStore(s3_client, bucket, prefix="archive", equal_parts=True, part_size=5 << 20)
    assert store.plan(31_000_000).capacity > 31_000_000  # with the estimate, the day fits
    try:
        result = archive_partition(conn, _spec(schema), DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        # the failure itself leaves nothing behind (that part holds): the promise broken is the up-front sizing
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert list(temp_dir.iterdir()) == []
        pytest.fail(f"a day whose size the catalog knows failed after uploading its capacity at the configured part "
                    f"size, its parts never raised from the estimate: {exc}")
    assert result.rows == 30000
