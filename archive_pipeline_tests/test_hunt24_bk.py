"""Hunt 24 (bk): the byte path line by line (compression, streams, sink, memory, the upload part of the store):
compressor and temp-file edges, and S3 faults mid-upload."""

from __future__ import annotations

import datetime as dt
import os
import threading

from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.defs.resources import ArchiveStoreResource
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)


def _staged_files() -> list[str]:
    """Where this process's open temp files (nameless: ``... (deleted)``) live."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)"):
            found.append(target.removesuffix(" (deleted)"))
    return found


def test_a_blank_temp_dir_stages_the_day_in_the_current_working_directory(conn, schema, s3, bucket, tmp_path,
                                                                          monkeypatch):
    """Scenario: the archive_store resource is given ``temp_dir: ""`` (a launchpad or YAML field left blank, or
    ``temp_dir=os.environ.get("ARCHIVE_TMP", "")`` in a deployment's definitions): the resource accepts it. TMPDIR
    points at the scratch volume sized for the staged days; the code server runs from some other directory (its
    working directory: the project checkout, ``/`` in many containers). A day is archived.

    Now: sink.open_nameless only treats ``None`` as "the default": ``os.open("", O_TMPFILE)`` fails with ENOENT, which
    is in _NO_TMPFILE (meant for file systems without O_TMPFILE), so it falls back to
    ``tempfile.mkstemp(dir="")``, which creates the file in the process's current working directory. The whole
    day is staged there, silently: on the root file system or the checkout rather than the volume TMPDIR names
    (and a full disk there would be reported as "the temp directory  is full", naming no directory at all).

    Should: a blank temp_dir is the default (TMPDIR, else the system temp dir), as a blank AWS_PROFILE is unset,
    or it is refused when the resource is built, naming the setting. Fix idea: ``temp_dir or None`` in
    open_nameless (and the resource's validator strips and blanks it to None)."""
    assert ArchiveStoreResource(s3=S3Resource(), bucket=bucket, temp_dir=" ").temp_dir is None  # the default
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, body text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, md5(g::text) FROM generate_series(1, 300) g").format(
        sql.Identifier(schema)), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="csv",
                     compression="gzip")
    scratch, elsewhere = tmp_path / "scratch", tmp_path / "workdir"
    scratch.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.chdir(elsewhere)
    with FaultProxy(s3.endpoint_url) as proxy:
        gate = threading.Event()
        proxy.add(Fault(method="PUT", path=r"\.csv\.gz$", action="hold", gate=gate, times=1, hold_timeout=60))
        store = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = archive_partition(conn, spec, DAY, store, temp_dir="")
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            staged = _staged_files()
        finally:
            gate.set()
            thread.join(60)
    assert "error" not in outcome, outcome
    assert outcome["result"].rows == 300
    dirs = {os.path.dirname(path) for path in staged}
    assert str(elsewhere) not in dirs, staged
    assert str(scratch) in dirs, staged
