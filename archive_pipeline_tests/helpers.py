"""Test helpers: reading archives back the way a user would (download, decompress, parse), and shared
setup and after-failure checks."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.csv as pacsv
import zstandard


def decompress(body: bytes, compression: str) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
    if compression == "gzip":
        return gzip.decompress(body)
    if compression == "lz4":
        return pa.CompressedInputStream(pa.BufferReader(body), "lz4").read()
    return body


def download(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_jsonl(data: bytes) -> list[dict]:
    # Decimal keeps every digit of PostgreSQL's numerics, as jq 1.7 or any careful reader would.
    # Split on b"\n" only: str.splitlines() would also split inside strings holding U+2028.
    return [json.loads(line, parse_float=Decimal) for line in data.split(b"\n") if line]


def read_csv(data: bytes) -> list[dict[str, str | None]]:
    """Parse with pyarrow, keeping NULL (unquoted empty) apart from '' (quoted empty), every value text."""
    header = next(csv.reader(io.StringIO(data.decode().split("\n", 1)[0])))
    table = pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                             null_values=[""], strings_can_be_null=True,
                                             quoted_strings_can_be_null=False),
    )
    return table.to_pylist()


def session_states(conn, application_name: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT state, backend_type FROM pg_stat_activity WHERE application_name = %s",
                        (application_name,)).fetchall()


def archive_while_the_store_holds_a_part(pg, s3, conn, bucket: str, spec, day, name: str, *, archiving=None,
                                         session_settings: dict | None = None):
    """Archive ``day`` while the store holds its first part, and check that meanwhile every row was read
    and every read transaction ended: the archiving session (application ``name``; ``archiving``, else one
    opened here) is the only one left, idle, past a 3 s idle_in_transaction_session_timeout (or the
    ``session_settings`` given) that would kill a session waiting in a transaction. Returns the
    ArchiveResult once the part is let go."""
    import threading
    import time

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    with FaultProxy(s3.endpoint_url) as proxy:
        held = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=1, hold_timeout=60))
        store = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        outcome: dict = {}
        own = archiving is None
        archiving = pg.connect(application_name=name) if own else archiving
        # 3 s, not less: before the hold the archive has gaps between statements in its transactions (connecting
        # its stream sessions, say) that a loaded machine stretches; the wait below outlasts it all the same
        settings = {"idle_in_transaction_session_timeout": "3000"} if session_settings is None else session_settings

        def run() -> None:
            try:
                outcome["result"] = archive_partition(archiving, spec, day, store, session_settings=settings)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            deadline = time.monotonic() + 60
            while session_states(conn, name) != [("idle", "client backend")] and time.monotonic() < deadline \
                    and thread.is_alive():  # a failed archive: its error, below, at once
                time.sleep(0.05)
            states = session_states(conn, name)
            assert states == [("idle", "client backend")], (states, outcome, proxy.held(), conn.execute(
                "SELECT pid, state, wait_event_type, wait_event, xact_start, state_change, left(query, 300) "
                "FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchall())
            assert thread.is_alive() and proxy.held() == 1
            time.sleep(3.5)  # past the idle timeout: a session idle in a transaction would be killed now
        finally:
            held.gate.set()
            thread.join(120)
    if own:
        archiving.close()
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"]


def assert_nothing_left(store, key: str, temp_dir) -> None:
    """After a failed first archive of ``key``: no object, no manifest, no open multipart upload in the
    bucket, no temp file."""
    from archive_pipeline.core.keys import manifest_key

    assert store.head(key) is None
    assert store.head(manifest_key(key)) is None
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


def range_partitioned_events(conn, schema: str, children: list[tuple[str, str, str]], zone: str = "+00", *,
                             not_null: bool = False) -> None:
    """``<schema>.ev (id int, at timestamptz)`` partitioned by range of ``at``, with ``children``
    as (name, first day, day after) bounded at midnight in ``zone`` (an offset or a zone name)."""
    from psycopg import sql

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz{}) PARTITION BY RANGE (at)").format(
        s, sql.SQL(" NOT NULL" if not_null else "")))
    separator = "" if zone[:1] in "+-" else " "
    for name, lo, hi in children:
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(name), s, sql.Literal(f"{lo} 00:00{separator}{zone}"),
            sql.Literal(f"{hi} 00:00{separator}{zone}")))


def forge_object(s3_client, bucket: str, key: str, manifest_key: str, body: bytes) -> None:
    """Replace an archived object with ``body`` and update its manifest's digests to match (a
    consistent forgery: only the rows' fingerprint can tell)."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    manifest = decode_manifest(download(s3_client, bucket, manifest_key))
    head = s3_client.head_object(Bucket=bucket, Key=key)
    manifest["object"].update(bytes=len(body), md5=hashlib.md5(body).hexdigest(),
                              sha256=hashlib.sha256(body).hexdigest(), etag=head["ETag"].strip('"'))
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


def tiny_tmpfs(path, size: str = "256k"):
    """A context manager mounting a ``size`` tmpfs at ``path`` (created) for a temp dir that fills up
    (the kernel answers ENOSPC), unmounted afterwards; skips the test where mounting is not allowed."""
    import contextlib
    import subprocess

    import pytest

    @contextlib.contextmanager
    def mounted():
        path.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)

    return mounted()


def refused_everywhere(conn, spec, store, key: str, pattern: str, day) -> None:
    """The removal's dry run and real run refuse ``day`` alike, naming table and day, matching ``pattern``; the
    manifest at ``key`` is left as it was (no mark left behind)."""
    import pytest

    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    before = store.get_verified_bytes(f"{key}.manifest.json")
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused, match=pattern) as caught:
            remove_day(conn, spec, day, store, dry_run=dry_run)
        assert (caught.value.table, caught.value.day) == (spec.name, day.isoformat()), dry_run
    assert (store.get_verified_bytes(f"{key}.manifest.json") or b'').rstrip() == before.rstrip()


PREVIOUS_VERSION = "dcddb3a859412d7a751e365c948c780b4ae9c03e"  # the last commit before row-hash-sum-v5 and source.encoding


def previous_version_code(commit: str = PREVIOUS_VERSION) -> str:
    """A directory holding the ``archive_pipeline`` package as ``commit`` had it (``git archive`` of this
    repository, once per process), for a subprocess that writes archives as that version did
    (``PYTHONPATH=<it>``): today's code must read, skip, prove, restore and remove them."""
    import atexit
    import io
    import shutil
    import subprocess
    import tarfile
    import tempfile
    from pathlib import Path

    cached = _PREVIOUS.get(commit)
    if cached:
        return cached
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "archive", commit, "archive_pipeline"], capture_output=True)
    if done.returncode:  # a checkout without that history (a shallow clone, an unpacked release): nothing to run
        import pytest

        pytest.skip(f"the previous version ({commit[:10]}) is not in this checkout's history: "
                    f"{done.stderr.decode(errors='replace').strip()}")
    tar = done.stdout
    dest = tempfile.mkdtemp(prefix=f"archive-pipeline-{commit[:8]}-")
    atexit.register(shutil.rmtree, dest, True)  # gone with the test process
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    _PREVIOUS[commit] = dest
    return dest


_PREVIOUS: dict[str, str] = {}


def run_check_evaluations(instance, run_id: str) -> list:
    """The check evaluations a run recorded, as the UI reads them (the instance's event log: an asset's logged
    events are there, not in execute_in_process's result)."""
    from dagster import DagsterEventType

    return [e.dagster_event.asset_check_evaluation_data
            for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)]


def run_materializations(instance, run_id: str) -> list:
    """The materializations a run recorded (the instance's event log, see :func:`run_check_evaluations`)."""
    from dagster import DagsterEventType

    return [e.dagster_event.event_specific_data.materialization
            for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]
