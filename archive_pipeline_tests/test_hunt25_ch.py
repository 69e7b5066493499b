"""Hunt 25 (ch): the first-run experience and the environment checks: the demo (local/demo.py), the throwaway
services it starts (local/local_stack.py) and what a new user's environment does to them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from archive_pipeline.local import local_stack
from archive_pipeline.local.local_stack import free_port

REPO = Path(__file__).resolve().parents[1]


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def _stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_demo_s_postgresql_does_not_start_when_the_user_s_shell_exports_pgsslmode(monkeypatch):
    """Scenario: a new user whose shell exports PGSSLMODE=require (the usual advice for a cloud database: Heroku,
    Render, RDS with rds.force_ssl) runs `make demo`; here start_postgres(), the demo's first step, with that
    variable set.

    Now: initdb and the server start fine, but _launch_on's readiness probe, psycopg.connect(server.dsn), inherits
    libpq's PGSSLMODE from the environment and is refused by the throwaway cluster (started without TLS: "server
    does not support SSL, but SSL was required"); the loop treats that OperationalError as "not up yet" for the whole
    30 s deadline, then stops the server and raises RuntimeError("PostgreSQL did not start; see
    <root>/server.log"), and the log it points at says "database system is ready to accept connections". The
    root (initdb's whole cluster) is kept behind in the temp directory. The same inheritance hits the demo's DSN
    (pg.dsn, written to env.sh and given to the Dagster runs) and every LocalPostgres.connect().

    Should: the throwaway cluster is the demo's own, so its DSN pins what it needs (sslmode=disable, and no
    service/passfile/target_session_attrs of the user's: e.g. build it as key=value with those keywords, or
    connect with PG* variables cleared): the demo starts as it does without the variable."""
    monkeypatch.setenv("PGSSLMODE", "require")
    started = time.monotonic()
    try:
        server = local_stack.start_postgres()
    except RuntimeError as exc:
        took = time.monotonic() - started
        root = Path(str(exc).rsplit("see ", 1)[-1]).parent  # the cluster it kept, for the log it names
        log = (root / "server.log").read_text(errors="replace") if root.name.startswith("archive-pg-") else ""
        shutil.rmtree(root, ignore_errors=True) if root.name.startswith("archive-pg-") else None
        raise AssertionError(f"after {took:.0f} s: {exc}; its server.log says it was ready: "
                             f"{'ready to accept connections' in log}") from None
    try:
        with server.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_the_demo_s_s3_server_does_not_start_when_the_user_s_shell_exports_an_http_proxy(monkeypatch):
    """Scenario: a new user behind a corporate proxy, whose shell exports http_proxy (and, as often, no no_proxy
    entry for 127.0.0.1), runs `make demo`; here start_s3(), the demo's second step, with http_proxy pointing at
    a proxy that is not there (a closed port on this machine).

    Now: moto's server starts on 127.0.0.1, but start_s3's readiness probe, urllib.request.urlopen(
    "http://127.0.0.1:<port>/moto-api/"), goes through the user's http_proxy (urllib's default opener honours it
    and, on Linux, exempts only what no_proxy lists); every probe fails, the loop takes that as "not up yet" for
    30 s, then stops the server and raises RuntimeError("moto S3 server did not start"), which it did.
    (LocalS3.client() and the demo's runs would go through the same proxy: botocore honours HTTP_PROXY too.)

    Should: the services on 127.0.0.1 are the demo's own; probe them without proxies
    (urllib.request.build_opener(urllib.request.ProxyHandler({}))) and add 127.0.0.1 to NO_PROXY/no_proxy in the
    environment the demo hands its clients, its runs and env.sh: the S3 server starts."""
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    try:
        server = local_stack.start_s3()
    except RuntimeError as exc:
        raise AssertionError(f"after {time.monotonic() - started:.0f} s: {exc}") from None
    server.stop()


def test_the_demo_with_zero_days_is_a_usage_error_not_a_traceback(tmp_path):
    """Scenario: `make demo ARGS="--days 0"` (a user who wants only the UI and the services, or a typo); here the
    demo module run as make runs it, with --home in the test's directory.

    Now: argparse takes any integer; _demo empties and recreates the instance directory, builds ``days`` as an
    empty list and prints f"... {days[0]}..{days[-1]}": an IndexError traceback ("list index out of range"),
    exit 1, nothing saying which option was wrong. (--days -3 does the same.)

    Should: a usage error naming the option before anything is touched, as argparse gives for a bad type
    (exit 2, "--days: must be at least 1"; e.g. a type=positive_int)."""
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.local.demo", "--days", "0", "--home", str(home)],
                          env=_demo_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 2 and "--days" in done.stderr, (done.returncode, done.stderr[-2000:])


def test_the_demo_with_its_ui_port_taken_does_not_point_the_user_at_another_server(tmp_path):
    """Scenario: `make demo UI=1` while port 3000 is already taken (an earlier demo left running in another
    terminal, a Grafana, any dev server); here the demo module with --ui --port <a port this test listens on>,
    one day of 10 rows.

    Now: nothing looks at the port before the work starts. The demo archives the days, then _run_dagster_dev
    starts `dagster dev -p <port>` and at once prints "Dagster UI: http://127.0.0.1:<port>  (Ctrl-C or SIGTERM
    stops it ...)". dagster-webserver fails to bind ("[Errno 98] ... address already in use") but its process
    does not exit, so dagster dev never notices and the demo waits forever beside a UI that is not there,
    sending the user to whatever else answers on that port (another demo's instance, with other runs).

    Should: the port is known before anything starts: refuse it then (bind it, as free_port does; exit non-zero
    "port 3000 is in use: stop what uses it or pass --port"), or at least wait for the webserver's
    /server_info of *this* instance before printing the URL, and fail naming the port when it never comes."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    log = tmp_path / "demo.log"
    cmd = [sys.executable, "-m", "archive_pipeline.local.demo", "--ui", "--port", str(port), "--days", "1",
           "--rows", "10", "--home", str(tmp_path / "home")]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=_demo_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    claim = f"Dagster UI: http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and claim not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
    finally:
        _stop_group(process)
        holder.close()
    output = log.read_text(errors="replace")
    assert claim not in output, output[-3000:]
    assert process.returncode not in (0, None) and str(port) in output, (process.returncode, output[-3000:])
