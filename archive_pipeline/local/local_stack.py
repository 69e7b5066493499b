"""Throwaway PostgreSQL cluster and S3 endpoint for the demo, the tests and the benchmarks.

Both are real servers on 127.0.0.1, started as child processes and removed on exit, so that
everything the project claims is exercised over the same wire protocols production uses.
PostgreSQL refuses to run as root, so when we are root the cluster runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from archive_pipeline.core.sqltext import with_params


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with _bound(0) as sock:
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now: asked before a server is started on a port the
    user chose, since one that fails to bind it may not exit (dagster-webserver does not)."""
    try:
        with _bound(port):
            return True
    except OSError:
        return False


def _bound(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` with SO_REUSEADDR, as servers bind (a port left in TIME_WAIT by a
    server that just stopped is free for them, one that something listens on is not)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


_LOOPBACK = ("127.0.0.1", "localhost")

# Asked directly: the servers of this module run on this machine, and the user's http_proxy (urllib's default
# opener honours it, and exempts only what no_proxy lists) would send every probe to a proxy instead.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serving(url: str, timeout: float = 2) -> bool:
    """Whether the local server at ``url`` answers it (a 2xx or 3xx), asked without any proxy."""
    try:
        _DIRECT.open(url, timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``url`` until it answers; a RuntimeError naming ``what`` if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not serving(url):
        if process.poll() is not None:
            raise RuntimeError(f"{what} did not start: it exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {url} did not answer within {timeout:g} s")
        time.sleep(0.1)


def without_proxy_for_loopback(environ: Mapping[str, str]) -> dict[str, str]:
    """``no_proxy``/``NO_PROXY`` for clients of the local servers (boto3, gRPC, urllib honour them): what
    ``environ`` lists, plus 127.0.0.1 and localhost, so that a user's http_proxy is not used for them."""
    listed = [h.strip() for h in (environ.get("no_proxy") or environ.get("NO_PROXY") or "").split(",") if h.strip()]
    value = ",".join([*listed, *(h for h in _LOOPBACK if h not in listed)])
    return {"no_proxy": value, "NO_PROXY": value}


def local_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ours) for the processes of the throwaway services and their clients: without libpq's
    PG* variables (a user's PGSSLMODE=require, PGSERVICE or PGOPTIONS is meant for their own databases and breaks
    the connections to these, and pg_basebackup's and a standby's) and with the loopback exempt from proxies."""
    environ = os.environ if environ is None else environ
    return {**{k: v for k, v in environ.items() if not k.startswith("PG")}, **without_proxy_for_loopback(environ)}


def stop_process_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group ``process`` leads (started with ``start_new_session``), SIGKILL when it
    outlasts ``timeout`` (a busy `dagster dev` may)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"PostgreSQL server binary {name!r} not found; install the postgresql package")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _chown_for_server(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


# What a connection to a throwaway cluster pins, whatever libpq would take from the user's environment (PGSSLMODE,
# PGGSSENCMODE, PGCHANNELBINDING, PGTARGETSESSIONATTRS, PGOPTIONS, PGHOSTADDR, or a PGSERVICE's entry): the
# cluster has no TLS and no Kerberos, and is the primary or standby it is. Only the keywords this libpq knows
# (channel_binding since 13). Not require_auth: its empty value is no method at all, not any method. What cannot
# be pinned (PGSERVICE naming no service, PGREQUIREAUTH) the processes of the demo do not inherit
# (local_environment), and the readiness probe reports at once.
_PINNED = {"sslmode": "disable", "gssencmode": "disable", "channel_binding": "disable",
           "target_session_attrs": "any", "options": "", "hostaddr": "127.0.0.1"}


def _pinned() -> dict[str, str]:
    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    return {key: value for key, value in _PINNED.items() if key in known}


@dataclass
class LocalPostgres:
    """A running throwaway cluster; ``dsn`` connects as the superuser over TCP."""

    port: int
    root: Path
    process: subprocess.Popen
    settings: dict[str, str] | None = None  # the -c settings it was started with, for restart()

    @property
    def dsn(self) -> str:
        """The superuser's URI: the address alone, which tests extend (``?option``); a client that may run
        in a user's environment gets :attr:`conninfo`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def conninfo(self) -> str:
        """:attr:`dsn` with what libpq would otherwise take from the environment pinned (see _PINNED): what the
        demo hands its runs, its CLI and env.sh, and what :meth:`connect` uses."""
        return make_conninfo(self.dsn, **_pinned())

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True, **kwargs)

    def dsn_for(self, user: str, password: str | None = None, database: str = "postgres") -> str:
        """A URI for another role (password percent-encoded, so any character works)."""
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def create_password_role(self, name: str, password: str, *, connection_limit: int = -1) -> str:
        """A LOGIN role that must authenticate with ``password`` (scram-sha-256) over TCP; its DSN.

        A ``pg_hba.conf`` line for the role goes before the ``trust`` lines and the server reloads,
        so a wrong password is refused exactly as on a production server.
        """
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Literal(connection_limit)))
        self.add_hba_lines([f'host all "{name}" 127.0.0.1/32 scram-sha-256'], role=name)
        return self.dsn_for(name, password)

    def restart(self) -> None:
        """Start a stopped (``stop(keep_root=True)``) cluster again, on a new free port."""
        started = _launch(self.root, self.settings)
        self.port, self.process = started.port, started.process

    def reconfigure(self, settings: dict[str, str], timeout: float = 10.0) -> None:
        """Change reloadable settings (``postgresql.auto.conf`` + ``pg_reload_conf()``), also on a standby;
        waits (bounded) until new sessions see them, so give values as
        ``SHOW`` prints them (``'0'``, ``'30s'``, ``'on'``). Settings given to
        ``start_postgres``/``start_replica`` are command-line options and cannot be changed this way."""
        auto = self.root / "data" / "postgresql.auto.conf"
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with open(auto, "a") as f:
            f.write(lines)
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while True:
            with self.connect() as conn:
                current = {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
                           for name in settings}
            if current == settings:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"settings {settings} not in effect after reload: {current}")
            time.sleep(0.05)

    def add_hba_lines(self, lines: list[str], *, role: str) -> None:
        """Put ``lines`` before the ``trust`` lines of ``pg_hba.conf`` and reload; returns once a
        password-less connection as ``role`` is refused (the reload is asynchronous)."""
        _prepend_hba(self.root / "data" / "pg_hba.conf", lines)
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(self.dsn_for(role), connect_timeout=2, passfile=str(self.root / "no-such-pgpass"),
                                **_pinned()).close()
            except psycopg.OperationalError as exc:
                if "password" in str(exc) or "rejects" in str(exc):  # refused by the new lines: in effect
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pg_hba.conf lines {lines} did not take effect")
            time.sleep(0.05)
        # A probe let in before the reload counts against the role's CONNECTION LIMIT until its backend has
        # exited, a moment after the client closed it: a test of that limit must not meet it.
        with self.connect() as conn:
            while conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s",
                               (role,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a probe session of {role} did not end")
                time.sleep(0.02)

    def stop(self, keep_root: bool = False) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint for a throwaway cluster) of the whole process
        group: runuser does not pass signals on, so signalling it alone would orphan the server."""
        group = self.process.pid  # started in its own session: the group holds runuser and postgres
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGQUIT)
        deadline = time.monotonic() + 15
        while _group_alive(self.process, group):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
        if not keep_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _group_alive(leader: subprocess.Popen, group: int) -> bool:
    leader.poll()  # reap the leader once it exits, or its zombie keeps the group "alive"
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


_BASE_SETTINGS = {"listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
                  "full_page_writes": "off", "max_connections": "50", "shared_buffers": "256MB"}


def _new_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    _chown_for_server(root)
    return root


def _launch(root: Path, settings: dict[str, str] | None) -> LocalPostgres:
    """Start the server of ``root/data`` on a free port and wait until it accepts connections. The port
    is free when chosen but may be taken before the server binds it (another server starting, a
    client's outgoing connection): the server then exits at once, and is started again on another port."""
    for attempt in range(3):
        try:
            return _launch_on(root, settings, free_port())
        except _PortTaken:
            if attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start; see {root / 'server.log'}") from None
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    """The server could not bind the port chosen for it."""


def _launch_on(root: Path, settings: dict[str, str] | None, port: int) -> LocalPostgres:
    conf = {**_BASE_SETTINGS, "port": str(port), "unix_socket_directories": str(root), **(settings or {})}
    args = [a for key, value in conf.items() for a in ("-c", f"{key}={value}")]
    log = open(root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    logged = log.tell()
    process = subprocess.Popen(_as_server_user([_pg_bin("postgres"), "-D", str(root / "data"), *args]),
                               stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                               env=local_environment())
    server = LocalPostgres(port=port, root=root, process=process, settings=settings)
    deadline = time.monotonic() + 30
    while True:
        # A server that said it is ready before we tried, yet refuses us, does so for a reason of the client's (its
        # environment): waiting would not help, and the reason is what to show.
        ready = b"ready to accept" in _log_since(root, logged)
        try:
            with server.connect(connect_timeout=2) as conn:
                # the port's server is ours, not one that took the port first (ours then fails to bind it)
                if _same_path(conn.execute("SHOW data_directory").fetchone()[0], root / "data"):
                    return server
            raise psycopg.OperationalError("another server listens on the port")
        except psycopg.OperationalError as exc:
            if ready or process.poll() is not None or time.monotonic() > deadline:
                server.stop(keep_root=True)
                if b"could not bind" in _log_since(root, logged):
                    raise _PortTaken(port) from None
                raise RuntimeError(f"PostgreSQL did not start on port {port}: {str(exc).strip()}; "
                                   f"see {root / 'server.log'}") from None
            time.sleep(0.1)


def _log_since(root: Path, offset: int) -> bytes:
    """What the server wrote to ``server.log`` after ``offset`` (its output since this start)."""
    with open(root / "server.log", "rb") as f:
        f.seek(offset)
        return f.read()


def _same_path(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def start_postgres(settings: dict[str, str] | None = None, *, hba_lines: list[str] | None = None) -> LocalPostgres:
    """initdb a cluster in a temp dir and start it on a free port (fsync off: data is disposable).

    ``hba_lines`` go before initdb's ``trust`` lines, so tests can demand a password of some roles
    (e.g. ``host all app 127.0.0.1/32 scram-sha-256``) while the superuser still gets in without one.
    """
    root = _new_root("archive-pg-")
    data = root / "data"
    subprocess.run(
        _as_server_user([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, env=local_environment(),
    )
    if hba_lines:
        _prepend_hba(data / "pg_hba.conf", hba_lines)
    return _launch(root, settings)


def _prepend_hba(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines) + path.read_text())


def start_replica(primary: LocalPostgres, settings: dict[str, str] | None = None,
                  timeout: float = 60.0) -> LocalPostgres:
    """A hot-standby streaming replica of ``primary`` on its own port, caught up when returned.

    ``pg_basebackup -R`` copies the primary and writes ``primary_conninfo`` and ``standby.signal``;
    the standby then streams WAL from the primary. It is returned once it has replayed a marker
    written to the primary's WAL after the copy, so whatever the primary held before is readable.
    The replica keeps the primary's ``pg_hba.conf`` and roles (they are part of the copy).
    """
    root = _new_root("archive-replica-")
    subprocess.run(
        _as_server_user([_pg_bin("pg_basebackup"), "-D", str(root / "data"), "-R", "-X", "stream",
                         "--checkpoint=fast", "--no-sync", "-h", "127.0.0.1", "-p", str(primary.port),
                         "-U", "postgres"]),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, env=local_environment(),
    )
    replica = _launch(root, {"hot_standby": "on", **(settings or {})})
    try:
        wait_for_replay(primary, replica, timeout)
    except BaseException:
        replica.stop()
        raise
    return replica


def wait_for_replay(primary: LocalPostgres, replica: LocalPostgres, timeout: float = 60.0) -> None:
    """Write a marker into the primary's WAL and wait (bounded) until ``replica`` has replayed it."""
    with primary.connect() as conn:
        marker = conn.execute("SELECT pg_logical_emit_message(false, 'archive_pipeline', 'replica marker')"
                              ).fetchone()[0]
    deadline = time.monotonic() + timeout
    with replica.connect() as conn:
        while not conn.execute("SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= %s::pg_lsn",
                               (str(marker),)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica on port {replica.port} did not replay {marker} within {timeout} s; "
                                   f"see {replica.root / 'server.log'}")
            time.sleep(0.05)


@dataclass
class LocalS3:
    """moto's S3 server over HTTP on 127.0.0.1 (a separate process, like a real endpoint)."""

    port: int
    process: subprocess.Popen

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(proxies={}))  # the endpoint is on this machine: never the user's proxy

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_s3() -> LocalS3:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=local_environment())
    server = LocalS3(port=port, process=process)
    try:
        wait_until_serving(f"{server.endpoint_url}/moto-api/", process, 30, f"moto S3 server on port {port}")
    except RuntimeError:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def local_stack() -> Iterator[tuple[LocalPostgres, LocalS3]]:
    pg = start_postgres()
    try:
        s3 = start_s3()
        try:
            yield pg, s3
        finally:
            s3.stop()
    finally:
        pg.stop()


SAMPLE_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id          bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    user_id     integer     NOT NULL,
    event_type  text        NOT NULL,
    amount      numeric(12,2),
    session_id  uuid,
    is_mobile   boolean,
    tags        text[],
    payload     jsonb
) PARTITION BY RANGE (created_at)
"""

# One generated row is about 210 bytes as CSV, like the benchmark table of the performance issue.
SAMPLE_EVENTS_FILL = """
INSERT INTO {table}
SELECT g,
       %(day)s::timestamptz + ((g * 86399::bigint) / %(rows)s) * interval '1 second',
       (g * 7919) %% 100000,
       (ARRAY['page_view','click','add_to_cart','purchase','signup'])[1 + g %% 5],
       CASE WHEN g %% 10 = 0 THEN NULL ELSE ((g * 31) %% 100000) / 100.0 END,
       md5(%(day)s || g::text)::uuid,
       g %% 3 = 0,
       ARRAY['campaign_' || (g %% 17), 'ab_' || (g %% 2)],
       jsonb_build_object('path', '/products/' || (g %% 5000), 'referrer', 'https://example.com/r/' || (g %% 97),
                          'ms', g %% 1000, 'note', CASE WHEN g %% 1000 = 0 THEN E'quote " back\\\\ nl\\n ü' END)
FROM generate_series(1::bigint, %(rows)s) AS g
"""


def create_sample_events(conn: psycopg.Connection, days: list[dt.date], rows_per_day: int,
                         schema: str = "public") -> None:
    """A declaratively partitioned ``<schema>.events`` with one child partition per day, filled."""
    table = sql.Identifier(schema, "events")
    conn.execute(sql.SQL(SAMPLE_EVENTS_DDL).format(table=table))
    for day in days:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {child} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})").format(
            child=sql.Identifier(schema, f"events_{day:%Y%m%d}"), table=table,
            lo=sql.Literal(dt.datetime.combine(day, dt.time(), dt.UTC)),
            hi=sql.Literal(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)),
        ))
        conn.execute(with_params(sql.SQL(SAMPLE_EVENTS_FILL).format(table=table), conn),
                     {"day": day.isoformat(), "rows": rows_per_day})
    conn.execute(sql.SQL("ANALYZE {}").format(table))
