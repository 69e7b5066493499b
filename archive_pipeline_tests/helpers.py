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


# --- the command line, in this process ------------------------------------------------------------------------------

CLI_MODULE = "archive_pipeline.cli"

# What a new interpreter reads only while it starts (the locale and so stdout's encoding, Python's own settings,
# the dynamic loader's): given a value other than this process's, only a new process honours it (see run_cli).
_AT_START_UP = ("LANG", "LANGUAGE", "LC_", "TZ", "LD_", "MALLOC_", "OPENSSL_CONF", "PYTHONIOENCODING", "PYTHONUTF8",
                "PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONCOERCECLOCALE",
                "PYTHONMALLOC", "PYTHONOPTIMIZE", "PYTHONINSPECT", "PYTHONSTARTUP", "PYTHONNOUSERSITE",
                "PYTHONUSERBASE", "PYTHONPLATLIBDIR", "PYTHONTRACEMALLOC", "PYTHONEXECUTABLE")

# A new interpreter's warning filters (no -W, no PYTHONWARNINGS, not -X dev), its __main__ being the CLI's module.
_DEFAULT_FILTERS = (("default", DeprecationWarning, CLI_MODULE), ("ignore", DeprecationWarning, ""),
                    ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                    ("ignore", ResourceWarning, ""))


def needs_a_process(env: dict[str, str]) -> str | None:
    """Why ``env`` can only be honoured by a new process (a locale, an encoding, Python's or the loader's start-up
    settings other than this process's, or a PYTHONPATH whose archive_pipeline is another copy), else None."""
    import os
    from pathlib import Path

    import archive_pipeline

    for name in sorted({*env, *os.environ}):
        if name.startswith(_AT_START_UP) and env.get(name) != os.environ.get(name):
            return f"{name} differs from this process's"
    here = Path(archive_pipeline.__file__).resolve().parent
    for entry in (env.get("PYTHONPATH") or "").split(os.pathsep):
        found = Path(entry or ".") / "archive_pipeline"
        if entry and (found / "__init__.py").is_file():
            return None if found.resolve() == here else f"PYTHONPATH holds another archive_pipeline ({found})"
    return None


def _stdio_errors() -> str:
    """The error handler a new interpreter gives stdout in this locale (Python's config_get_stdio_errors)."""
    import locale
    import sys

    ctype = locale.setlocale(locale.LC_CTYPE)
    return "surrogateescape" if sys.flags.utf8_mode or ctype in ("C", "POSIX", "C.UTF-8", "C.utf8", "UTF-8") \
        else "strict"


def run_cli(args, env: dict[str, str], *, cwd=None, timeout: float | None = 60, process: bool | None = None,
            input: str | None = None, preexec_fn=None):  # noqa: A002 - subprocess.run's name
    """``python -m archive_pipeline.cli *args`` as a subprocess.CompletedProcess (args, returncode, stdout and
    stderr as text), run in this process unless ``process`` (a real ``python -m`` process: signals, start-up,
    rlimits through ``preexec_fn``, ...) or ``env`` needs one (see :func:`needs_a_process`). A start-up costs a
    second of imports; in-process the command runs as the process would:

    - ``os.environ`` is exactly ``env`` (for libpq too: putenv), the working directory ``cwd``, ``sys.argv`` what
      ``python -m`` makes of it, stdin empty, tempfile's cached temp dir forgotten (TMPDIR is re-read); all put back
      afterwards;
    - stdout and stderr are UTF-8 text streams over bytes (not TTYs, no fileno), also as ``sys.__stdout__`` and
      ``sys.__stderr__``; the CLI's wrappers around them are dropped afterwards (the streams before are put back);
    - a fresh contextvars.Context (the CLI's per-command ContextVars start unset), a new interpreter's warning
      filters, printed on stderr;
    - the root logger without handlers (a warning goes to stderr as logging's last resort prints it), every
      logger's handlers and levels and every signal handler as they were before, afterwards;
    - SystemExit is the exit code as Python makes it (None 0, an int modulo 256, anything else printed on stderr
      and 1); an uncaught exception prints its traceback on stderr and exits 1 (KeyboardInterrupt: -SIGINT, as
      Python dies of it); non-daemon threads the command left are joined and garbage collected (what it left
      open is closed) as at a process's exit.

    ``timeout`` is not enforced in-process (the command runs on this thread, which holds its signal handlers):
    past it, the stacks of every thread are dumped once to the real stderr, for a hang to be diagnosable."""
    import contextlib
    import contextvars
    import faulthandler
    import gc
    import io
    import locale
    import logging
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import threading
    import traceback
    import warnings

    argv = [sys.executable, "-m", CLI_MODULE, *map(str, args)]
    if process is None:
        process = preexec_fn is not None or needs_a_process(env) is not None
    if process:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, input=input,
                              preexec_fn=preexec_fn)

    from archive_pipeline import cli

    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors=_stdio_errors(), line_buffering=False)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", line_buffering=True)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_std = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    saved_argv = sys.argv
    saved_tempdir = tempfile.tempdir
    saved_signals = {signum: signal.getsignal(signum) for signum in signal.valid_signals()
                     if signum not in (signal.SIGKILL, signal.SIGSTOP)}
    root = logging.getLogger()
    loggers = [root, *(logger for logger in logging.root.manager.loggerDict.values()
                       if isinstance(logger, logging.Logger))]
    saved_logging = [(logger, logger.level, list(logger.handlers), logger.propagate, logger.disabled)
                     for logger in loggers]
    saved_disable = logging.root.manager.disable
    threads_before = set(threading.enumerate())
    real_stderr = saved_std[5] if saved_std[5] is not None else sys.stderr
    watchdog = timeout is not None and hasattr(real_stderr, "fileno")

    def call() -> int:
        try:
            cli.main(list(argv[3:]), prog_name=f"python -m {CLI_MODULE}")
        except SystemExit as exc:
            code = exc.code
            if code is None:
                return 0
            if isinstance(code, int):
                return code & 0xFF
            print(code, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            traceback.print_exc(file=sys.stderr)
            return -signal.SIGINT
        except BaseException:  # noqa: BLE001 - as the interpreter reports it
            traceback.print_exc(file=sys.stderr)
            return 1
        return 0

    try:
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = None
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = [cli.__file__, *argv[3:]]
        sys.stdin = sys.__stdin__ = io.StringIO(input or "")
        sys.stdout = sys.__stdout__ = out
        sys.stderr = sys.__stderr__ = err
        root.handlers = []
        root.setLevel(logging.WARNING)
        logging.disable(logging.NOTSET)
        if watchdog:
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback_later(timeout, file=real_stderr)
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_DEFAULT_FILTERS):
                warnings.filterwarnings(action, category=category, module=rf"{module}\Z" if module else "")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            gc.freeze()  # (this process's objects: the collection below looks at the command's only, in ms)
            try:
                returncode = contextvars.Context().run(call)
                for thread in set(threading.enumerate()) - threads_before:
                    if not thread.daemon:
                        thread.join(timeout)
                gc.collect()
            finally:
                gc.unfreeze()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    finally:
        if watchdog:
            faulthandler.cancel_dump_traceback_later()
        (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__) = saved_std
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tempdir
        for signum, handler in saved_signals.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(signum, handler)
        for logger, level, handlers, propagate, disabled in saved_logging:
            logger.setLevel(level)
            logger.handlers = handlers
            logger.propagate, logger.disabled = propagate, disabled
        logging.disable(saved_disable)
    with contextlib.suppress(Exception):
        out.flush()
    with contextlib.suppress(Exception):
        err.flush()
    encoding = locale.getpreferredencoding(False)  # subprocess.run(text=True) decodes so, newlines universal

    def text(data: bytes) -> str:
        return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess(argv, returncode, text(out_bytes.getvalue()), text(err_bytes.getvalue()))
